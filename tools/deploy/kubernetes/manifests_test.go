package kubernetes_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/paddock-sandbox/paddock/proxy/policy"
)

const namespace = "paddock-system"

// manifests is every object in this directory, decoded strictly into the
// Kubernetes API types: an unknown or misspelt field fails the test.
type manifests struct {
	namespaces []corev1.Namespace
	accounts   []corev1.ServiceAccount
	configMaps map[string]corev1.ConfigMap
	daemonSets []appsv1.DaemonSet
	files      []string
}

// kustomization is the part of kustomize's type this directory uses.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

func load(t *testing.T) *manifests {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	m := &manifests{configMaps: map[string]corev1.ConfigMap{}}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if f == "kustomization.yaml" {
			var k kustomization
			if err := yaml.UnmarshalStrict(data, &k); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			m.files = k.Resources
			continue
		}
		for i, doc := range strings.Split(string(data), "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var meta struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
				t.Fatalf("%s doc %d: %v", f, i, err)
			}
			strict := func(into any) {
				if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
					t.Fatalf("%s doc %d (%s %s): %v", f, i, meta.APIVersion, meta.Kind, err)
				}
			}
			switch meta.APIVersion + " " + meta.Kind {
			case "v1 Namespace":
				var o corev1.Namespace
				strict(&o)
				m.namespaces = append(m.namespaces, o)
			case "v1 ServiceAccount":
				var o corev1.ServiceAccount
				strict(&o)
				checkNamespace(t, f, o.Namespace)
				m.accounts = append(m.accounts, o)
			case "v1 ConfigMap":
				var o corev1.ConfigMap
				strict(&o)
				checkNamespace(t, f, o.Namespace)
				m.configMaps[o.Name] = o
			case "apps/v1 DaemonSet":
				var o appsv1.DaemonSet
				strict(&o)
				checkNamespace(t, f, o.Namespace)
				m.daemonSets = append(m.daemonSets, o)
			default:
				t.Fatalf("%s doc %d: %s %s is not a kind this test knows; add it", f, i, meta.APIVersion, meta.Kind)
			}
		}
	}
	var all []string
	for _, f := range files {
		if f != "kustomization.yaml" {
			all = append(all, f)
		}
	}
	slices.Sort(all)
	listed := slices.Sorted(slices.Values(m.files))
	if !slices.Equal(all, listed) {
		t.Errorf("kustomization.yaml lists %v, the directory holds %v", listed, all)
	}
	return m
}

func checkNamespace(t *testing.T, file, ns string) {
	t.Helper()
	if ns != namespace {
		t.Errorf("%s: namespace %q, want %q", file, ns, namespace)
	}
}

func (m *manifests) daemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	if len(m.daemonSets) != 1 {
		t.Fatalf("%d DaemonSets, want 1", len(m.daemonSets))
	}
	return &m.daemonSets[0]
}

func container(t *testing.T, cs []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

func TestObjects(t *testing.T) {
	m := load(t)
	if len(m.namespaces) != 1 || m.namespaces[0].Name != namespace {
		t.Errorf("namespaces = %v, want only %s", m.namespaces, namespace)
	}
	ds := m.daemonSet(t)
	pod := ds.Spec.Template.Spec
	if len(m.accounts) != 1 || pod.ServiceAccountName != m.accounts[0].Name {
		t.Errorf("pod's service account %q is not the one defined", pod.ServiceAccountName)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts an API token it never uses")
	}
	if !pod.HostNetwork {
		t.Error("paddockd must run in the host network: tcx attaches to host veths")
	}
	if ds.Spec.Selector == nil || !labelsMatch(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Error("selector does not match the pod template's labels")
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("container %s has no cpu/memory requests", c.Name)
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s has no memory limit", c.Name)
		}
		for _, vm := range c.VolumeMounts {
			if _, ok := vols[vm.Name]; !ok {
				t.Errorf("container %s mounts undefined volume %q", c.Name, vm.Name)
			}
		}
		for _, e := range c.Env {
			if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil {
				cm, ok := m.configMaps[r.ConfigMapKeyRef.Name]
				if _, has := cm.Data[r.ConfigMapKeyRef.Key]; !ok || !has {
					t.Errorf("container %s env %s: no key %s in ConfigMap %s", c.Name, e.Name, r.ConfigMapKeyRef.Key, r.ConfigMapKeyRef.Name)
				}
			}
		}
		if c.Image != pod.Containers[0].Image {
			t.Errorf("container %s runs image %s, the others %s", c.Name, c.Image, pod.Containers[0].Image)
		}
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s has no securityContext", c.Name)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged && c.Name != "mount-bpffs" {
			t.Errorf("container %s is privileged; only the bpffs mount may be", c.Name)
		}
	}
	for name, v := range vols {
		if cm := v.ConfigMap; cm != nil {
			if _, ok := m.configMaps[cm.Name]; !ok {
				t.Errorf("volume %s: no ConfigMap %s", name, cm.Name)
			}
		}
	}
}

func labelsMatch(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

func TestPaddockd(t *testing.T) {
	m := load(t)
	pod := m.daemonSet(t).Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers: the proxy runs as paddockd's child, not as a container", len(pod.Containers))
	}
	c := container(t, pod.Containers, "paddockd")

	sc := c.SecurityContext
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("paddockd is privileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("paddockd may gain privileges (allowPrivilegeEscalation)")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("paddockd's root filesystem is writable")
	}
	var add []string
	for _, cp := range sc.Capabilities.Add {
		add = append(add, string(cp))
	}
	slices.Sort(add)
	if want := []string{"BPF", "CHOWN", "KILL", "NET_ADMIN", "NET_BIND_SERVICE", "PERFMON", "SETGID", "SETUID"}; !slices.Equal(add, want) {
		t.Errorf("capabilities %v, want exactly %v (the systemd unit's set)", add, want)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities drop %v, want ALL", sc.Capabilities.Drop)
	}

	mounts := map[string]corev1.VolumeMount{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	hostToContainer := corev1.MountPropagationHostToContainer
	for path, want := range map[string]struct {
		host        string // hostPath, or "" for a ConfigMap/Secret
		propagation *corev1.MountPropagationMode
		readOnly    bool
	}{
		"/sys/fs/bpf":           {"/sys/fs/bpf", &hostToContainer, false},
		"/run/netns":            {"/run/netns", &hostToContainer, true},
		"/run/paddock":          {"/run/paddock", nil, false},
		"/var/lib/paddock":      {"/var/lib/paddock", nil, false},
		"/var/log/paddock":      {"/var/log/paddock", nil, false},
		"/etc/paddock/policies": {"", nil, true},
		"/etc/paddock/secrets":  {"", nil, true},
		"/etc/paddock/config":   {"", nil, true},
	} {
		vm, ok := mounts[path]
		if !ok {
			t.Errorf("paddockd does not mount %s", path)
			continue
		}
		v := vols[vm.Name]
		if want.host != "" && (v.HostPath == nil || v.HostPath.Path != want.host) {
			t.Errorf("%s: volume %s is not hostPath %s", path, vm.Name, want.host)
		}
		if (want.propagation == nil) != (vm.MountPropagation == nil) || want.propagation != nil && *vm.MountPropagation != *want.propagation {
			t.Errorf("%s: mountPropagation %v, want %v", path, vm.MountPropagation, want.propagation)
		}
		if vm.ReadOnly != want.readOnly {
			t.Errorf("%s: readOnly %v, want %v", path, vm.ReadOnly, want.readOnly)
		}
		if vm.SubPath != "" {
			t.Errorf("%s: subPath mounts never see ConfigMap/Secret updates", path)
		}
	}
	if v := vols[mounts["/etc/paddock/policies"].Name]; v.ConfigMap == nil || v.ConfigMap.Name != "paddock-policies" {
		t.Error("policies do not come from the paddock-policies ConfigMap")
	}
	if v := vols[mounts["/etc/paddock/secrets"].Name]; v.Secret == nil || v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o007 != 0 {
		t.Error("secrets are not a Secret volume closed to others")
	} else if pod.SecurityContext == nil || pod.SecurityContext.FSGroup == nil || *pod.SecurityContext.FSGroup != 64000 {
		t.Error("secret files must be group 64000 (fsGroup) so the proxy child can read them")
	}

	// paddockd's configuration: its flags, checked against the probes.
	var conf map[string]string
	if err := yaml.UnmarshalStrict([]byte(m.configMaps["paddock-config"].Data["paddockd.yaml"]), &conf); err != nil {
		t.Fatalf("paddockd.yaml: %v", err)
	}
	if !slices.Equal(c.Command, []string{"paddockd", "--config", "/etc/paddock/config/paddockd.yaml"}) {
		t.Errorf("paddockd command %v", c.Command)
	}
	if !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(conf["proxy-user"]) {
		t.Errorf("proxy-user %q: want a non-root uid:gid (the image has no passwd entry for it)", conf["proxy-user"])
	}
	for k, v := range conf {
		if strings.HasSuffix(k, "-dir") && mountedPrefix(mounts, v) == "" {
			t.Errorf("%s %s is not on a volume: it would live in the read-only image", k, v)
		}
	}
	port := conf["metrics-addr"][strings.LastIndex(conf["metrics-addr"], ":")+1:]
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("no %s probe", name)
			continue
		}
		if p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != port || p.HTTPGet.Host != conf["metrics-addr"][:strings.LastIndex(conf["metrics-addr"], ":")] {
			t.Errorf("%s probe %s:%s%s, want %s/healthz", name, p.HTTPGet.Host, p.HTTPGet.Port.String(), p.HTTPGet.Path, conf["metrics-addr"])
		}
	}
}

// mountedPrefix is the mount path that holds path, or "".
func mountedPrefix(mounts map[string]corev1.VolumeMount, path string) string {
	for p := range mounts {
		if path == p || strings.HasPrefix(path, p+"/") {
			return p
		}
	}
	return ""
}

func TestPolicies(t *testing.T) {
	m := load(t)
	cm, ok := m.configMaps["paddock-policies"]
	if !ok || len(cm.Data) == 0 {
		t.Fatal("no paddock-policies ConfigMap with policies")
	}
	for key, text := range cm.Data {
		name, ok := strings.CutSuffix(key, ".yaml")
		if !ok {
			t.Errorf("key %s: policies are NAME.yaml", key)
			continue
		}
		if _, err := policy.Parse(key, name, []byte(text)); err != nil {
			t.Errorf("policy %s: %v", key, err)
		}
	}
	example, err := os.ReadFile("../../examples/policies/default.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["default.yaml"] != string(example) {
		t.Error("the default policy differs from tools/examples/policies/default.yaml: copy it over")
	}
	if p := m.configMaps["paddock-config"].Data["policy"]; cm.Data[p+".yaml"] == "" {
		t.Errorf("paddock-config's policy %q is not in paddock-policies", p)
	}
}

// TestInstallCNI runs the init container's command line, with the
// ConfigMap's values and the host paths moved into a temp dir, against a
// Calico conflist: a pod start chains paddock and copies the plugin, a
// restart changes nothing, and `paddock cni uninstall` gives the file back.
func TestInstallCNI(t *testing.T) {
	m := load(t)
	pod := m.daemonSet(t).Spec.Template.Spec
	c := container(t, pod.InitContainers, "install-cni")
	want := []string{"paddock", "cni", "install", "--conf-dir", "/host/etc/cni/net.d", "--chain", "$(PADDOCK_CHAIN_NETWORK)",
		"--bin-dir", "/host/opt/cni/bin", "--copy-binary", "/usr/local/bin/paddock-cni", "--policy", "$(PADDOCK_POLICY)"}
	if !slices.Equal(c.Command, want) {
		t.Fatalf("install-cni command %q, want %q", c.Command, want)
	}
	mounts := map[string]bool{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = true
		if hp := volume(pod, vm.Name).HostPath; hp == nil || "/host"+hp.Path != vm.MountPath {
			t.Errorf("install-cni mounts %s from %v, want hostPath %s", vm.MountPath, hp, strings.TrimPrefix(vm.MountPath, "/host"))
		}
	}
	if !mounts["/host/etc/cni/net.d"] || !mounts["/host/opt/cni/bin"] {
		t.Errorf("install-cni mounts %v, want both CNI dirs", mounts)
	}

	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = m.configMaps[e.ValueFrom.ConfigMapKeyRef.Name].Data[e.ValueFrom.ConfigMapKeyRef.Key]
	}
	root := t.TempDir()
	cli := filepath.Join(root, "paddock")
	build := exec.Command("go", "build", "-o", cli, "./cmd/paddock")
	build.Dir = "../../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	image := filepath.Join(root, "image-paddock-cni")
	if err := os.WriteFile(image, []byte("plugin stand-in\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	netd := filepath.Join(root, "host/etc/cni/net.d")
	if err := os.MkdirAll(netd, 0o755); err != nil {
		t.Fatal(err)
	}
	calico, err := os.ReadFile("testdata/10-calico.conflist")
	if err != nil {
		t.Fatal(err)
	}
	conflist := filepath.Join(netd, "10-calico.conflist")
	if err := os.WriteFile(conflist, calico, 0o644); err != nil {
		t.Fatal(err)
	}
	args := make([]string, 0, len(c.Command)-1)
	for _, a := range c.Command[1:] {
		a = os.Expand(strings.NewReplacer("$(", "${", ")", "}").Replace(a), func(k string) string { return env[k] })
		switch {
		case strings.HasPrefix(a, "/host/"):
			a = filepath.Join(root, a)
		case a == "/usr/local/bin/paddock-cni":
			a = image
		}
		args = append(args, a)
	}
	for i := range 2 { // pod start, then a restart
		out, err := exec.Command(cli, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("run %d: paddock %s: %v\n%s", i, strings.Join(args, " "), err, out)
		}
	}
	plugin, err := os.ReadFile(filepath.Join(root, "host/opt/cni/bin/paddock"))
	if err != nil || string(plugin) != "plugin stand-in\n" {
		t.Errorf("plugin not copied into the bin dir: %v", err)
	}
	chained, _ := os.ReadFile(conflist)
	var l struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(chained, &l); err != nil || len(l.Plugins) != 4 {
		t.Fatalf("chained conflist: %v\n%s", err, chained)
	}
	if last := l.Plugins[3]; last["type"] != "paddock" || last["policy"] != env["PADDOCK_POLICY"] {
		t.Errorf("last plugin %v, want paddock with policy %q", last, env["PADDOCK_POLICY"])
	}
	ents, _ := os.ReadDir(netd)
	if len(ents) != 2 {
		t.Errorf("net.d holds %d files, want the conflist and its backup", len(ents))
	}

	out, err := exec.Command(cli, "cni", "uninstall", "--conf-dir", netd, "--chain", env["PADDOCK_CHAIN_NETWORK"]).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if back, _ := os.ReadFile(conflist); !bytes.Equal(back, calico) {
		t.Errorf("uninstall did not restore the Calico conflist:\n%s", back)
	}
	if ents, _ := os.ReadDir(netd); len(ents) != 1 {
		t.Errorf("net.d holds %d files after uninstall, want 1", len(ents))
	}
}

func volume(pod corev1.PodSpec, name string) corev1.Volume {
	for _, v := range pod.Volumes {
		if v.Name == name {
			return v
		}
	}
	panic(fmt.Sprintf("no volume %q", name))
}
