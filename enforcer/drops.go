package enforcer

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultLogDir is where paddockd writes drops.jsonl unless told otherwise.
const DefaultLogDir = "/var/log/paddock"

// DropsFile is the name of the drop log inside the log directory.
const DropsFile = "drops.jsonl"

// DropsPath is the drop log inside logDir (DefaultLogDir if empty).
func DropsPath(logDir string) string {
	if logDir == "" {
		logDir = DefaultLogDir
	}
	return filepath.Join(logDir, DropsFile)
}

// Drop is one packet nftables dropped, as one line of drops.jsonl.
type Drop struct {
	Time        time.Time `json:"time"`
	Sandbox     string    `json:"sandbox"` // short container id, "unknown" if the interface is not a sandbox's
	ContainerID string    `json:"containerID,omitempty"`
	IfName      string    `json:"ifname,omitempty"`
	HostVeth    string    `json:"hostVeth,omitempty"`
	Policy      string    `json:"policy,omitempty"`
	Reason      string    `json:"reason"`
	Proto       string    `json:"proto"`
	Src         string    `json:"src,omitempty"`
	Dst         string    `json:"dst,omitempty"`
	SrcPort     uint16    `json:"srcPort,omitempty"`
	DstPort     uint16    `json:"dstPort,omitempty"`
	ICMPType    *uint8    `json:"icmpType,omitempty"`
	ICMPCode    *uint8    `json:"icmpCode,omitempty"`
	Len         int       `json:"len"`
	Hook        string    `json:"hook,omitempty"`
	Prefix      string    `json:"prefix,omitempty"`
}

// reasonFromPrefix maps an NFLOG prefix back to its reason name; a prefix
// paddock did not write is reported as "unknown".
func reasonFromPrefix(prefix string) string {
	name, ok := strings.CutPrefix(prefix, "paddock:")
	if !ok {
		return ReasonUnknown.String()
	}
	for _, r := range Reasons() {
		if r.String() == name {
			return name
		}
	}
	return ReasonUnknown.String()
}

// hookNames are the netfilter hooks of the inet family.
var hookNames = []string{"prerouting", "input", "forward", "output", "postrouting"}

func hookName(h uint8) string {
	if int(h) < len(hookNames) {
		return hookNames[h]
	}
	return fmt.Sprintf("hook-%d", h)
}

var protoNames = map[uint8]string{1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmpv6", 132: "sctp"}

func protoName(p uint8) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return fmt.Sprintf("ip-proto-%d", p)
}

// decodePacket fills the L3/L4 fields of d from an IP packet. The packet
// comes from a sandbox, so every length is checked before it is used; what
// cannot be decoded is left empty rather than guessed.
func decodePacket(d *Drop, b []byte) {
	d.Len = len(b)
	if len(b) < 1 {
		d.Proto = "empty"
		return
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			d.Proto = "ipv4-truncated"
			return
		}
		ihl := int(b[0]&0x0f) * 4
		d.Src = netip.AddrFrom4([4]byte(b[12:16])).String()
		d.Dst = netip.AddrFrom4([4]byte(b[16:20])).String()
		d.Proto = protoName(b[9])
		if tl := int(binary.BigEndian.Uint16(b[2:4])); tl >= 20 {
			d.Len = tl
		}
		if ihl < 20 || ihl > len(b) {
			return
		}
		// Only the first fragment carries the transport header.
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			d.Proto += "-fragment"
			return
		}
		decodeL4(d, b[9], b[ihl:])
	case 6:
		if len(b) < 40 {
			d.Proto = "ipv6-truncated"
			return
		}
		d.Src = netip.AddrFrom16([16]byte(b[8:24])).String()
		d.Dst = netip.AddrFrom16([16]byte(b[24:40])).String()
		d.Len = 40 + int(binary.BigEndian.Uint16(b[4:6]))
		next, rest := b[6], b[40:]
		// Walk a bounded number of extension headers to the transport.
		for range 8 {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 2 || len(rest) < (int(rest[1])+1)*8 {
					d.Proto = "ipv6"
					return
				}
				next, rest = rest[0], rest[(int(rest[1])+1)*8:]
				continue
			case 44: // fragment
				if len(rest) < 8 {
					d.Proto = "ipv6"
					return
				}
				if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
					d.Proto = protoName(rest[0]) + "-fragment"
					return
				}
				next, rest = rest[0], rest[8:]
				continue
			}
			break
		}
		d.Proto = protoName(next)
		decodeL4(d, next, rest)
	default:
		d.Proto = fmt.Sprintf("ip-version-%d", b[0]>>4)
	}
}

func decodeL4(d *Drop, proto uint8, b []byte) {
	switch proto {
	case 6, 17, 132: // tcp, udp, sctp: ports first
		if len(b) >= 4 {
			d.SrcPort = binary.BigEndian.Uint16(b[0:2])
			d.DstPort = binary.BigEndian.Uint16(b[2:4])
		}
	case 1, 58: // icmp, icmpv6
		if len(b) >= 2 {
			t, c := b[0], b[1]
			d.ICMPType, d.ICMPCode = &t, &c
		}
	}
}

// ReadDrops reads every complete line of a drop log. A missing file is an
// empty log; lines that are not valid JSON (a torn last line) are skipped.
func ReadDrops(path string) ([]Drop, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open drop log: %w", err)
	}
	defer f.Close()
	var out []Drop
	_, err = ScanDrops(f, func(d Drop, _ []byte) { out = append(out, d) })
	return out, err
}

// ScanDrops calls fn for each complete line of r, decoded and raw (without
// the newline), and returns how many bytes those lines took, so a follower
// can resume after them. Lines that are not a JSON drop are skipped.
func ScanDrops(r io.Reader, fn func(Drop, []byte)) (int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var n int64
	for {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			return n, nil // an incomplete last line is read again later
		}
		if err != nil {
			return n, fmt.Errorf("read drop log: %w", err)
		}
		n += int64(len(line))
		var d Drop
		if json.Unmarshal(line, &d) == nil {
			fn(d, line[:len(line)-1])
		}
	}
}

// followPoll bounds how stale `paddock drops --follow` can be.
const followPoll = 250 * time.Millisecond

// FollowDrops calls fn for every line appended to the drop log after it
// was called, until ctx ends. It survives the file being created later,
// truncated or replaced.
func FollowDrops(ctx context.Context, path string, fn func(d Drop, raw []byte)) error {
	return FollowDropsFrom(ctx, path, -1, fn)
}

// FollowDropsFrom is FollowDrops starting at byte offset off of the current
// file (what ScanDrops returned for it), so no line written between reading
// the log and following it is lost; off < 0 means the end of the file.
func FollowDropsFrom(ctx context.Context, path string, off int64, fn func(d Drop, raw []byte)) error {
	var ino uint64
	if st, err := os.Stat(path); err == nil && off >= 0 {
		ino = inode(st)
	}
	for {
		if st, err := os.Stat(path); err == nil {
			cur := inode(st)
			if off < 0 {
				off, ino = st.Size(), cur
			} else if ino == 0 {
				ino = cur // created after we started
			}
			if cur != ino || st.Size() < off {
				off, ino = 0, cur // replaced or truncated: read it from the start
			}
			if st.Size() > off {
				n, err := readFrom(path, off, fn)
				if err != nil {
					return err
				}
				off += n
			}
		} else if off < 0 {
			off = 0 // not there yet: everything it will hold is new
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(followPoll):
		}
	}
}

func readFrom(path string, off int64, fn func(Drop, []byte)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open drop log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, fmt.Errorf("seek drop log: %w", err)
	}
	return ScanDrops(f, fn)
}

func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}
