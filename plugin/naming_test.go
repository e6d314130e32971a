package plugin

import (
	"regexp"
	"testing"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

func TestHostVethName(t *testing.T) {
	k := api.Key{Network: "paddock", ContainerID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", IfName: "eth0"}
	name := HostVethName(k)
	if name != HostVethName(k) {
		t.Fatal("not deterministic")
	}
	if len(name) > 15 || !regexp.MustCompile(`^pdk[0-9a-f]{12}$`).MatchString(name) {
		t.Fatalf("name %q is not pdk + 12 hex digits (<= 15 chars)", name)
	}
	// Golden value: the name is part of the node's visible state, so a
	// change of scheme must be deliberate (old veths would be orphaned).
	if got, want := HostVethName(api.Key{Network: "n", ContainerID: "c", IfName: "eth0"}), "pdkc41f63a48434"; got != want {
		t.Fatalf("HostVethName(n/c/eth0) = %s, want %s (sha256 of \"n/c/eth0\")", got, want)
	}
	seen := map[string]api.Key{}
	for _, other := range []api.Key{
		k,
		{Network: "paddock2", ContainerID: k.ContainerID, IfName: "eth0"},
		{Network: "paddock", ContainerID: k.ContainerID, IfName: "eth1"},
		{Network: "paddock", ContainerID: "x" + k.ContainerID[1:], IfName: "eth0"},
	} {
		n := HostVethName(other)
		if prev, dup := seen[n]; dup {
			t.Fatalf("%v and %v both map to %s", prev, other, n)
		}
		seen[n] = other
	}
}

func TestAliasRoundTrip(t *testing.T) {
	k := api.Key{Network: "paddock", ContainerID: "abc", IfName: "eth0"}
	got, ok := api.KeyFromAlias(k.Alias())
	if !ok || got != k {
		t.Fatalf("KeyFromAlias(%v.Alias()) = %v, %v", k, got, ok)
	}
	for _, bad := range []string{"", "other:paddock/abc/eth0", "paddock:paddock/abc", "paddock:/abc/eth0"} {
		if _, ok := api.KeyFromAlias(bad); ok {
			t.Errorf("alias %q accepted", bad)
		}
	}
}
