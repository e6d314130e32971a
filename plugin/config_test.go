package plugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const goodIPAM = `"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.208.0.0/16"}]]}`

func conf(fields string) []byte {
	return []byte(`{"cniVersion": "1.0.0", "name": "paddock-test", "type": "paddock", ` + fields + `}`)
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(conf(goodIPAM + `, "runtimeConfig": {"portMappings": []}, "args": {"cni": {}}, "capabilities": {"portMappings": true}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != DefaultPolicy || c.MTU != DefaultMTU || c.DaemonSocket != "/run/paddock/paddockd.sock" || c.IPAM.Type != "host-local" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if c.validAttachments != nil {
		t.Fatalf("valid attachments should be nil when absent, got %v", c.validAttachments)
	}
}

func TestParseConfigValidAttachments(t *testing.T) {
	for name, tc := range map[string]struct {
		extra string
		want  int
	}{
		"empty list":  {`, "cni.dev/valid-attachments": []`, 0},
		"one":         {`, "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]`, 1},
		"alias (1.1)": {`, "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]`, 1},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := parseConfig(conf(goodIPAM + tc.extra))
			if err != nil {
				t.Fatal(err)
			}
			if c.validAttachments == nil || len(c.validAttachments) != tc.want {
				t.Fatalf("valid attachments = %#v, want %d entries", c.validAttachments, tc.want)
			}
		})
	}
}

func TestParseConfigInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, fields string
		code         uint
		mentions     []string
	}{
		{"ipam not an object", `"ipam": "host-local"`, 7, []string{"ipam", `"host-local"`}},
		{"ipam without type", `"ipam": {"ranges": []}`, 7, []string{"ipam", "type", `"ranges"`}},
		{"ipam type with slash", `"ipam": {"type": "../evil"}`, 7, []string{"ipam type", "../evil"}},
		{"mtu too small", goodIPAM + `, "mtu": 100`, 7, []string{"mtu", "100"}},
		{"mtu too large", goodIPAM + `, "mtu": 70000`, 7, []string{"mtu", "70000"}},
		{"mtu negative", goodIPAM + `, "mtu": -1`, 7, []string{"mtu", "-1"}},
		{"mtu a string", goodIPAM + `, "mtu": "9000"`, 7, []string{"mtu", `"9000"`}},
		{"policy uppercase", goodIPAM + `, "policy": "Default"`, 7, []string{"policy", "Default"}},
		{"policy path", goodIPAM + `, "policy": "../etc/passwd"`, 7, []string{"policy", "../etc/passwd"}},
		{"policy too long", goodIPAM + `, "policy": "` + strings.Repeat("a", 64) + `"`, 7, []string{"policy", strings.Repeat("a", 64)}},
		{"policy not a string", goodIPAM + `, "policy": 3`, 7, []string{"policy", "3"}},
		{"daemonSocket relative", goodIPAM + `, "daemonSocket": "paddockd.sock"`, 7, []string{"daemonSocket", "paddockd.sock"}},
		{"grant without policies", goodIPAM + `, "allowedPolicies": [{"namespaces": ["a"]}]`, 7, []string{"allowedPolicies[0]", "policies"}},
		{"grant with bad policy", goodIPAM + `, "allowedPolicies": [{"namespaces": ["a"], "policies": ["Web"]}]`, 7, []string{"allowedPolicies[0]", `"Web"`}},
		{"grant with bad pattern", goodIPAM + `, "allowedPolicies": [{"namespaces": ["team-["], "policies": ["web"]}]`, 7, []string{"allowedPolicies[0]", `"team-["`}},
		{"selector matching everything", goodIPAM + `, "policySelectors": [{"policy": "ci"}]`, 7, []string{"policySelectors[0]", "every sandbox"}},
		{"selector with bad policy", goodIPAM + `, "policySelectors": [{"namespace": "ci", "policy": "../ci"}]`, 7, []string{"policySelectors[0]", `"../ci"`}},
		{"valid-attachments not a list", goodIPAM + `, "cni.dev/valid-attachments": "all"`, 7, []string{"cni.dev/valid-attachments"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(conf(tc.fields))
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("want a CNI error, got %v", err)
			}
			if e.Code != tc.code {
				t.Errorf("code = %d, want %d (%s)", e.Code, tc.code, e.Msg)
			}
			for _, m := range tc.mentions {
				if !strings.Contains(e.Msg, m) {
					t.Errorf("message %q does not mention %q", e.Msg, m)
				}
			}
			if e.Msg != strings.ToLower(e.Msg[:1])+e.Msg[1:] {
				t.Errorf("message %q does not start lowercase", e.Msg)
			}
		})
	}
}

// TestCheckMode: standalone needs ipam, chained (prevResult) must not have it.
func TestCheckMode(t *testing.T) {
	prev := `"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}], "ips": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 0}]}`
	for _, tc := range []struct {
		name, fields string
		want         string // "" for no error
	}{
		{"standalone", goodIPAM, ""},
		{"chained", prev, ""},
		{"no ipam, no prevResult", `"policy": "x"`, "ipam is missing"},
		{"ipam null, no prevResult", `"ipam": null`, "ipam is missing"},
		{"ipam and prevResult", goodIPAM + ", " + prev, "remove it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(conf(tc.fields))
			if err != nil {
				t.Fatal(err)
			}
			merr := c.checkMode()
			switch {
			case tc.want == "" && merr != nil:
				t.Fatalf("checkMode: %v", merr)
			case tc.want != "" && (merr == nil || merr.Code != 7 || !strings.Contains(merr.Msg, tc.want)):
				t.Fatalf("checkMode = %v, want code 7 mentioning %q", merr, tc.want)
			}
		})
	}
}

func TestParseConfigNotJSON(t *testing.T) {
	_, err := parseConfig([]byte(`{"name": `))
	var e *types.Error
	if !errors.As(err, &e) || e.Code != types.ErrDecodingFailure {
		t.Fatalf("want decoding failure (6), got %v", err)
	}
}

func TestParseArgs(t *testing.T) {
	got, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web=1")
	if err != nil {
		t.Fatal(err)
	}
	if got["K8S_POD_NAME"] != "web=1" || got["IgnoreUnknown"] != "1" || got["K8S_POD_NAMESPACE"] != "ns" || len(got) != 3 {
		t.Fatalf("parseArgs = %v", got)
	}
	if _, err := parseArgs("IgnoreUnknown=1;garbage"); err == nil || !strings.Contains(err.Error(), "garbage") {
		t.Fatalf("malformed CNI_ARGS: err = %v", err)
	}
	if got, err := parseArgs(""); err != nil || got != nil {
		t.Fatalf("empty CNI_ARGS: %v %v", got, err)
	}
}

// TestExampleConflist keeps tools/examples/paddock.conflist valid.
func TestExampleConflist(t *testing.T) {
	list, err := libcni.ConfListFromFile("../tools/examples/paddock.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.0.0" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "paddock" {
		t.Fatalf("example conflist: version %s, %d plugins", list.CNIVersion, len(list.Plugins))
	}
	conf, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseConfig(conf.Bytes)
	if err != nil {
		t.Fatalf("example plugin config: %v", err)
	}
	if c.IPAM.Type != "host-local" || c.Policy != "default" {
		t.Fatalf("example plugin config parsed as %+v", c)
	}
}
