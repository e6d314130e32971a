package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/paddock-sandbox/paddock/enforcer"
)

func TestFormatDrop(t *testing.T) {
	ts := time.Date(2026, 11, 26, 14, 3, 1, 0, time.UTC)
	typ, code := uint8(8), uint8(0)
	for _, c := range []struct {
		d    enforcer.Drop
		want string
	}{
		{enforcer.Drop{Time: ts, Sandbox: "3f2a9c1b7d20", Proto: "udp", Src: "10.1.0.2", SrcPort: 5353, Dst: "192.0.2.20", DstPort: 7, Reason: "udp"},
			"2026-11-26T14:03:01Z  sandbox 3f2a9c1b7d20  udp   10.1.0.2:5353 → 192.0.2.20:7  (reason udp)"},
		{enforcer.Drop{Time: ts, Sandbox: "3f2a9c1b7d20", Proto: "icmp", Src: "10.1.0.2", Dst: "192.0.2.20", ICMPType: &typ, ICMPCode: &code, Reason: "icmp"},
			"2026-11-26T14:03:01Z  sandbox 3f2a9c1b7d20  icmp  10.1.0.2 → 192.0.2.20 type 8 code 0  (reason icmp)"},
		{enforcer.Drop{Time: ts, Sandbox: "unknown", HostVeth: "veth1", Proto: "udp", Src: "2001:db8::2", SrcPort: 1, Dst: "2001:db8::1", DstPort: 2, Reason: "ipv6"},
			"2026-11-26T14:03:01Z  sandbox unknown       udp   [2001:db8::2]:1 → [2001:db8::1]:2  (reason ipv6) on veth1"},
	} {
		if got := formatDrop(c.d); got != c.want {
			t.Errorf("formatDrop:\n got %q\nwant %q", got, c.want)
		}
	}
}

func TestPrintExistingFilters(t *testing.T) {
	log := `{"sandbox":"aaaaaaaaaaaa","containerID":"aaaaaaaaaaaa1111","reason":"udp","proto":"udp"}
{"sandbox":"bbbbbbbbbbbb","containerID":"bbbbbbbbbbbb2222","reason":"icmp","proto":"icmp"}
{"sandbox":"aaaaaaaaaaaa","containerID":"aaaaaaaaaaaa1111","reason":"ipv6","proto":"udp"}
not json
{"sandbox":"aaaaaaaaaaaa","containerID":"aaaaaaaaaaaa1111","reason":"ip-proto","proto":"ip-proto-253"}
`
	run := func(p dropPrinter, n int) string {
		var out bytes.Buffer
		p.out = &out
		if _, err := p.printExisting(strings.NewReader(log), n); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	if got := run(dropPrinter{sandbox: "aaaaaaaaaaaa1111"}, 0); strings.Count(got, "\n") != 3 || strings.Contains(got, "icmp") {
		t.Errorf("--sandbox full id:\n%s", got)
	}
	if got := run(dropPrinter{sandbox: "bbbb"}, 0); strings.Count(got, "\n") != 1 || !strings.Contains(got, "(reason icmp)") {
		t.Errorf("--sandbox prefix:\n%s", got)
	}
	got := run(dropPrinter{json: true, sandbox: "aaaaaaaaaaaa"}, 2)
	want := `{"sandbox":"aaaaaaaaaaaa","containerID":"aaaaaaaaaaaa1111","reason":"ipv6","proto":"udp"}
{"sandbox":"aaaaaaaaaaaa","containerID":"aaaaaaaaaaaa1111","reason":"ip-proto","proto":"ip-proto-253"}
`
	if got != want {
		t.Errorf("--json -n 2:\n got %s\nwant %s", got, want)
	}
}
