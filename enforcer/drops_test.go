package enforcer

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func ipv4Packet(proto byte, l4 []byte) []byte {
	h := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0, 198, 51, 100, 2, 192, 0, 2, 20}
	total := len(h) + len(l4)
	h[2], h[3] = byte(total>>8), byte(total)
	return append(h, l4...)
}

func TestDecodePacket(t *testing.T) {
	v6 := make([]byte, 40)
	v6[0] = 0x60
	v6[6] = 0 // hop-by-hop, then UDP
	v6[8], v6[9] = 0x20, 0x01
	v6[24], v6[25] = 0x20, 0x01
	v6 = append(v6, 17, 0, 0, 0, 0, 0, 0, 0) // hop-by-hop: next udp, len 0 (8 bytes)
	v6 = append(v6, 0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0)
	v6[5] = byte(len(v6) - 40)

	frag := ipv4Packet(17, []byte{0, 1, 0, 2, 0, 8, 0, 0})
	frag[7] = 0x10 // offset != 0

	for name, c := range map[string]struct {
		pkt  []byte
		want string
	}{
		"udp":        {ipv4Packet(17, []byte{0x30, 0x39, 0, 7, 0, 8, 0, 0}), `"proto":"udp","src":"198.51.100.2","dst":"192.0.2.20","srcPort":12345,"dstPort":7,"len":28`},
		"icmp echo":  {ipv4Packet(1, []byte{8, 0, 0, 0}), `"proto":"icmp","src":"198.51.100.2","dst":"192.0.2.20","icmpType":8,"icmpCode":0,"len":24`},
		"raw":        {ipv4Packet(253, []byte("x")), `"proto":"ip-proto-253","src":"198.51.100.2","dst":"192.0.2.20","len":21`},
		"short udp":  {ipv4Packet(17, []byte{1}), `"proto":"udp","src":"198.51.100.2","dst":"192.0.2.20","len":21`},
		"fragment":   {frag, `"proto":"udp-fragment","src":"198.51.100.2","dst":"192.0.2.20","len":28`},
		"bad ihl":    {append([]byte{0x4f}, ipv4Packet(6, nil)[1:]...), `"proto":"tcp","src":"198.51.100.2","dst":"192.0.2.20","len":20`},
		"truncated":  {[]byte{0x45, 0, 0}, `"proto":"ipv4-truncated","len":3`},
		"empty":      {nil, `"proto":"empty","len":0`},
		"ipv6 hbh":   {v6, `"proto":"udp","src":"2001::","dst":"2001::","srcPort":12345,"dstPort":53,"len":56`},
		"ipv6 short": {v6[:30], `"proto":"ipv6-truncated","len":30`},
		"ipv6 cut":   {v6[:44], `"proto":"ipv6","src":"2001::","dst":"2001::","len":56`},
		"not ip":     {[]byte{0x10, 1, 2}, `"proto":"ip-version-1","len":3`},
	} {
		var d Drop
		decodePacket(&d, c.pkt)
		b, _ := json.Marshal(d)
		if !strings.Contains(string(b), c.want) {
			t.Errorf("%s: got %s, want it to contain %s", name, b, c.want)
		}
	}
}

// FuzzDecodePacket: sandbox traffic is hostile; decoding never panics.
func FuzzDecodePacket(f *testing.F) {
	f.Add(ipv4Packet(17, []byte{0, 1, 0, 2}))
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 44, 64})
	f.Fuzz(func(t *testing.T, b []byte) {
		var d Drop
		decodePacket(&d, b)
	})
}

func TestReasonFromPrefix(t *testing.T) {
	for prefix, want := range map[string]string{
		NFLOGPrefix(ReasonUDP):     "udp",
		NFLOGPrefix(ReasonSpoofIP): "spoofed-ip",
		"paddock:nonsense":         "unknown",
		"other:udp":                "unknown",
		"":                         "unknown",
	} {
		if got := reasonFromPrefix(prefix); got != want {
			t.Errorf("reasonFromPrefix(%q) = %q, want %q", prefix, got, want)
		}
	}
}

func TestReadAndFollowDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), DropsFile)
	if ds, err := ReadDrops(path); err != nil || len(ds) != 0 {
		t.Fatalf("missing log: %v %v", ds, err)
	}
	write := func(s string) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	write(`{"sandbox":"a","reason":"udp"}` + "\n" + "garbage\n" + `{"sandbox":"b","reason":"icmp"}` + "\n" + `{"sandbox":"c"`)
	ds, err := ReadDrops(path)
	if err != nil || len(ds) != 2 || ds[0].Sandbox != "a" || ds[1].Reason != "icmp" {
		t.Fatalf("ReadDrops = %+v, %v; want a/udp and b/icmp (garbage and torn line skipped)", ds, err)
	}

	var mu sync.Mutex
	var seen []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- FollowDrops(ctx, path, func(d Drop, raw []byte) {
			mu.Lock()
			seen = append(seen, d.Sandbox)
			mu.Unlock()
		})
	}()
	time.Sleep(2 * followPoll)
	write(`,"reason":"udp"}` + "\n") // completes the torn line: already there before Follow, not new
	write(`{"sandbox":"d","reason":"udp"}` + "\n")
	time.Sleep(3 * followPoll)
	os.Truncate(path, 0)
	time.Sleep(2 * followPoll)
	write(`{"sandbox":"e","reason":"udp"}` + "\n")
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		got := strings.Join(seen, ",")
		mu.Unlock()
		if strings.HasSuffix(got, "e") || time.Now().After(deadline) {
			if got != "c,d,e" && got != "d,e" {
				t.Errorf("followed %q, want d then e (c allowed: its line was completed after follow began)", got)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
