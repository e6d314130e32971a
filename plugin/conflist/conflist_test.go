package conflist

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.chained golden files")

var entry = NewEntry("default", "/run/paddock/paddockd.sock")

// fixtures are real-shaped conflists paddock chains onto: ptp, Calico's
// Kubernetes default, a compact one-line file with unknown fields, a
// tab-indented chain.
var fixtures = []struct {
	file, network string
	plugins       []string // plugin types before paddock
}{
	{"10-calico.conflist", "k8s-pod-network", []string{"calico", "portmap", "bandwidth"}},
	{"20-ptp.conflist", "ptp-net", []string{"ptp"}},
	{"30-compact.conflist", "compact", []string{"ptp", "bandwidth"}},
	{"40-tabbed.conflist", "tabbed", []string{"ptp", "tuning", "firewall"}},
}

// refused are real-shaped conflists whose primary paddock cannot enforce
// on: podman's and containerd's bridge defaults.
var refused = []struct{ file, network, primary string }{
	{"87-podman-bridge.conflist", "podman", "bridge"},
	{"10-containerd-net.conflist", "containerd-net", "bridge"},
}

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pluginsOf parses data as a runtime does and returns its plugin objects.
func pluginsOf(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	l, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, data)
	}
	var out []map[string]any
	for _, p := range l.Plugins {
		var m map[string]any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestChainUnchain(t *testing.T) {
	for _, f := range fixtures {
		t.Run(f.file, func(t *testing.T) {
			orig := readFixture(t, f.file)
			out, changed, err := Chain(orig, entry)
			if err != nil || !changed {
				t.Fatalf("Chain: changed=%v err=%v", changed, err)
			}
			golden := filepath.Join("testdata", f.file+".chained")
			if *update {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if want := readFixture(t, f.file+".chained"); !bytes.Equal(out, want) {
				t.Errorf("chained file differs from %s:\n%s", golden, out)
			}

			before, after := pluginsOf(t, orig), pluginsOf(t, out)
			if len(after) != len(f.plugins)+1 {
				t.Fatalf("got %d plugins, want %d", len(after), len(f.plugins)+1)
			}
			for i, typ := range f.plugins {
				if after[i]["type"] != typ || !sameJSON(mustJSON(t, before[i]), mustJSON(t, after[i])) {
					t.Errorf("plugin %d changed: %v -> %v", i, before[i], after[i])
				}
			}
			last := after[len(after)-1]
			if last["type"] != "paddock" || last["policy"] != "default" || last["daemonSocket"] != "/run/paddock/paddockd.sock" || len(last) != 3 {
				t.Errorf("paddock entry = %v", last)
			}
			if !sameTopLevel(t, orig, out) {
				t.Errorf("top-level fields other than plugins changed")
			}
			if keys(t, orig) != keys(t, out) {
				t.Errorf("top-level key order changed: %s -> %s", keys(t, orig), keys(t, out))
			}

			again, changed, err := Chain(out, entry)
			if err != nil || changed || !bytes.Equal(again, out) {
				t.Errorf("second Chain: changed=%v err=%v, want a no-op", changed, err)
			}

			back, changed, err := Unchain(out)
			if err != nil || !changed {
				t.Fatalf("Unchain: changed=%v err=%v", changed, err)
			}
			if !bytes.Equal(back, orig) {
				t.Errorf("install+uninstall is not byte-identical:\n--- got\n%s\n--- want\n%s", back, orig)
			}
			if same, changed, err := Unchain(orig); err != nil || changed || !bytes.Equal(same, orig) {
				t.Errorf("Unchain without a paddock entry: changed=%v err=%v, want a no-op", changed, err)
			}
		})
	}
}

func TestChainUpdatesEntryInPlace(t *testing.T) {
	orig := readFixture(t, "10-calico.conflist")
	first, _, err := Chain(orig, entry)
	if err != nil {
		t.Fatal(err)
	}
	other := NewEntry("ci", "/run/other.sock")
	second, changed, err := Chain(first, other)
	if err != nil || !changed {
		t.Fatalf("Chain with another policy: changed=%v err=%v", changed, err)
	}
	ps := pluginsOf(t, second)
	if len(ps) != 4 || ps[3]["policy"] != "ci" || ps[3]["daemonSocket"] != "/run/other.sock" {
		t.Fatalf("entry not replaced in place: %v", ps)
	}
	back, _, err := Unchain(second)
	if err != nil || !bytes.Equal(back, orig) {
		t.Errorf("Unchain after an update is not the original (err %v):\n%s", err, back)
	}
}

func TestChainEdgeShapes(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"empty plugins", `{"cniVersion":"1.0.0","name":"n","plugins":[]}`},
		{"paddock first", `{"name":"n","plugins":[{"type":"paddock","policy":"x","daemonSocket":"/s"},{"type":"tuning"}]}`},
		{"paddock only", `{"name":"n","plugins":[ {"type":"paddock"} ]}`},
		{"spaced compact", `{"name": "n", "plugins": [{"type": "a"}, {"type": "b"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := Chain([]byte(tc.in), entry)
			if err != nil {
				t.Fatal(err)
			}
			ps := pluginsOf(t, out)
			n := 0
			for _, p := range ps {
				if p["type"] == "paddock" {
					n++
					if p["policy"] != "default" {
						t.Errorf("paddock entry not updated: %v", p)
					}
				}
			}
			if n != 1 {
				t.Errorf("%d paddock entries in %s", n, out)
			}
			back, changed, err := Unchain(out)
			if err != nil || !changed {
				t.Fatalf("Unchain: changed=%v err=%v", changed, err)
			}
			if has, _ := HasEntry(back); has {
				t.Errorf("paddock entry left behind: %s", back)
			}
			if !json.Valid(back) {
				t.Errorf("Unchain broke the JSON: %s", back)
			}
		})
	}
}

func TestChainRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"single-plugin conf", string(readFixture(t, "99-single.conf")), "convert it to a conflist"},
		{"not JSON", `{"name": `, "invalid JSON"},
		{"array", `[1]`, "not a JSON object"},
		{"plugins not a list", `{"name":"n","plugins":{}}`, "not a list"},
		{"plugin without type", `{"name":"n","plugins":[1]}`, "plugins[0]"},
		{"no plugins", `{"name":"n"}`, "not a CNI conflist"},
		{"two objects", `{"name":"n","plugins":[]} {}`, "after the top-level object"},
		{"plugins twice", `{"name":"n","plugins":[],"plugins":[]}`, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Chain([]byte(tc.in), entry)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	if _, _, err := Chain(readFixture(t, "99-single.conf"), entry); !errors.Is(err, ErrNotList) {
		t.Errorf("err = %v, want ErrNotList", err)
	}
}

// TestChainRefusesUnroutedPrimary: a primary that gives no routed veth pair
// is refused with a PrimaryError naming its type and what works instead,
// also when the conflist already holds a paddock entry; other primaries,
// known or not, are chained.
func TestChainRefusesUnroutedPrimary(t *testing.T) {
	cases := map[string]string{}
	for _, f := range refused {
		cases[f.file] = string(readFixture(t, f.file))
	}
	for _, typ := range []string{"bridge", "macvlan", "ipvlan", "host-device", "vlan", "sriov", "dummy", "tap", "flannel"} {
		cases[typ] = `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"` + typ + `"},{"type":"tuning"}]}`
	}
	cases["bridge already chained"] = `{"name":"n","plugins":[{"type":"bridge"},{"type":"paddock","policy":"x","daemonSocket":"/s"}]}`
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			out, changed, err := Chain([]byte(in), entry)
			var pe *PrimaryError
			if !errors.As(err, &pe) || out != nil || changed {
				t.Fatalf("Chain = %q, %v, %v; want a *PrimaryError", out, changed, err)
			}
			var first struct {
				Plugins []struct{ Type string } `json:"plugins"`
			}
			if err := json.Unmarshal([]byte(in), &first); err != nil {
				t.Fatal(err)
			}
			if pe.Type != first.Plugins[0].Type {
				t.Errorf("PrimaryError.Type = %q, want %q", pe.Type, first.Plugins[0].Type)
			}
			msg := err.Error()
			for _, want := range []string{`"` + pe.Type + `"`, "ptp", "calico", "leave out --chain"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not mention %s", msg, want)
				}
			}
		})
	}
	for _, typ := range []string{"ptp", "calico", "cilium-cni", "some-routed-veth-plugin"} {
		in := `{"name":"n","plugins":[{"type":"` + typ + `"}]}`
		if _, changed, err := Chain([]byte(in), entry); err != nil || !changed {
			t.Errorf("primary %q: changed=%v err=%v, want it chained", typ, changed, err)
		}
	}
}

func TestStandalone(t *testing.T) {
	b, err := Standalone(StandaloneNetwork, entry, DefaultSubnet)
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if l.CNIVersion != "1.0.0" || l.Name != "paddock" || len(l.Plugins) != 1 || l.Plugins[0].Network.Type != "paddock" || l.Plugins[0].Network.IPAM.Type != "host-local" {
		t.Errorf("standalone conflist = %s", b)
	}
	if !strings.Contains(string(b), `"subnet": "10.208.0.0/16"`) {
		t.Errorf("default subnet missing: %s", b)
	}
	if _, err := Standalone("paddock", entry, netip.MustParsePrefix("2001:db8::/64")); err == nil {
		t.Error("IPv6 subnet accepted")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sameTopLevel(t *testing.T, a, b []byte) bool {
	var x, y map[string]json.RawMessage
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	delete(x, "plugins")
	delete(y, "plugins")
	return sameJSON(mustJSON(t, x), mustJSON(t, y))
}

// keys lists the top-level keys of data in file order.
func keys(t *testing.T, data []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.Token()
	var ks []string
	for dec.More() {
		k, _ := dec.Token()
		ks = append(ks, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return strings.Join(ks, ",")
}
