package enforcer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	nflog "github.com/florianl/go-nflog/v2"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	vnetlink "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/paddock-sandbox/paddock/plugin/api"
)

// DropLoggerConfig configures the NFLOG reader.
type DropLoggerConfig struct {
	// Group is the NFLOG group the nft drop rules log to (not the tap group:
	// a group has one reader, and the tap group is the operator's).
	Group uint16
	// Path is the JSON-lines drop log, normally <log-dir>/drops.jsonl.
	Path string
	// ByIfIndex maps the in-interface (the host veth) to its sandbox.
	ByIfIndex func(ifindex int) (api.Sandbox, bool)
	Logger    *slog.Logger
	Metrics   prometheus.Registerer
}

// DropLogger turns NFLOG messages from nftables' drop rules into lines of
// the drop log, log events and metrics.
type DropLogger struct {
	cfg   DropLoggerConfig
	log   *slog.Logger
	nf    *nflog.Nflog
	drops *prometheus.CounterVec

	mu     sync.Mutex
	file   *LogFile
	health string
	errs   int // consecutive receive errors
}

// copyRange is how much of each packet the kernel copies to us: enough
// for IPv6 with extension headers plus ports, not the payload.
const copyRange = 256

// maxRecvErrors consecutive receive errors stop the reader instead of
// spinning on a broken socket; Health then reports it.
const maxRecvErrors = 100

// StartDropLogger opens the drop log and starts reading the NFLOG group in
// the calling thread's network namespace. It stops when ctx ends.
func StartDropLogger(ctx context.Context, cfg DropLoggerConfig) (*DropLogger, error) {
	if cfg.Group == 0 {
		return nil, fmt.Errorf("nflog group 0 is reserved: configure the group the drop rules log to")
	}
	if cfg.Path == "" {
		return nil, fmt.Errorf("drop log path is empty: pass <log-dir>/%s", DropsFile)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ByIfIndex == nil {
		cfg.ByIfIndex = func(int) (api.Sandbox, bool) { return api.Sandbox{}, false }
	}
	file, err := OpenLogFile(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("drop log: %w", err)
	}
	l := &DropLogger{cfg: cfg, log: cfg.Logger, file: file, health: "ok"}
	l.drops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "paddock_drops_total",
		Help: "Packets from sandboxes dropped and logged through NFLOG (log rate limit applies).",
	}, []string{"sandbox", "reason"})
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(l.drops); err != nil {
			file.Close()
			return nil, fmt.Errorf("register drop metrics: %w", err)
		}
	}

	// QThresh 1: the kernel otherwise batches messages for about a second.
	nf, err := nflog.Open(&nflog.Config{Group: cfg.Group, Copymode: nflog.CopyPacket, Bufsize: copyRange, QThresh: 1})
	if err != nil {
		l.close()
		return nil, fmt.Errorf("open nflog: %w", err)
	}
	// Under a flood, losing log messages is better than losing the socket.
	if err := nf.SetOption(netlink.NoENOBUFS, true); err != nil {
		nf.Close()
		l.close()
		return nil, fmt.Errorf("nflog socket option: %w", err)
	}
	l.nf = nf
	if err := nf.RegisterWithErrorFunc(ctx, l.handle, func(err error) int { return l.recvError(ctx, err) }); err != nil {
		nf.Close()
		l.close()
		if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("nflog group %d already has a reader (tcpdump -i nflog:%d? another paddockd?): %w", cfg.Group, cfg.Group, err)
		}
		return nil, fmt.Errorf("bind nflog group %d: %w", cfg.Group, err)
	}
	go func() {
		<-ctx.Done()
		nf.Close()
		l.close()
	}()
	return l, nil
}

func (l *DropLogger) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
	l.health = "stopped"
}

// Health is "ok" or what is wrong with the reader or the drop log.
func (l *DropLogger) Health() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.health
}

func (l *DropLogger) recvError(ctx context.Context, err error) int {
	if ctx.Err() != nil {
		return 1
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs++
	if l.errs >= maxRecvErrors {
		l.health = fmt.Sprintf("nflog reader stopped after %d receive errors: %v", l.errs, err)
		l.log.Error("nflog reader stopped", "group", l.cfg.Group, "err", err)
		return 1
	}
	l.health = "nflog receive error: " + err.Error()
	l.log.Warn("nflog receive error", "group", l.cfg.Group, "err", err)
	return 0
}

func (l *DropLogger) handle(a nflog.Attribute) int {
	d := l.decode(a)
	line, err := json.Marshal(d)
	if err != nil {
		return 0
	}
	line = append(line, '\n')
	l.mu.Lock()
	l.errs = 0
	if l.file != nil {
		// One write per line: O_APPEND keeps lines whole for readers.
		if _, err := l.file.Write(line); err != nil {
			l.health = "write drop log: " + err.Error()
		} else if l.health != "ok" && l.health != "stopped" {
			l.health = "ok"
		}
	}
	l.mu.Unlock()
	l.drops.WithLabelValues(d.Sandbox, d.Reason).Inc()
	dst := d.Dst
	if d.DstPort != 0 {
		if a, err := netip.ParseAddr(d.Dst); err == nil {
			dst = netip.AddrPortFrom(a, d.DstPort).String()
		}
	}
	l.log.Info("drop", "sandbox", d.Sandbox, "reason", d.Reason, "proto", d.Proto, "src", d.Src, "dst", dst, "policy", d.Policy)
	return 0
}

func (l *DropLogger) decode(a nflog.Attribute) Drop {
	d := Drop{Time: time.Now().UTC(), Sandbox: "unknown"}
	if a.Timestamp != nil && !a.Timestamp.IsZero() {
		d.Time = a.Timestamp.UTC()
	}
	if a.Prefix != nil {
		d.Prefix = *a.Prefix
	}
	d.Reason = reasonFromPrefix(d.Prefix)
	if a.Hook != nil {
		d.Hook = hookName(*a.Hook)
	}
	if a.InDev != nil {
		idx := int(*a.InDev)
		if sb, ok := l.cfg.ByIfIndex(idx); ok {
			d.Sandbox, d.ContainerID, d.IfName, d.HostVeth, d.Policy = sb.ShortID(), sb.ContainerID, sb.IfName, sb.HostVeth, sb.Policy
		} else if link, err := vnetlink.LinkByIndex(idx); err == nil {
			// Not registered (yet): a veth the plugin made still names its
			// attachment in its alias, e.g. while its ADD is being attached.
			d.HostVeth = link.Attrs().Name
			if k, ok := api.KeyFromAlias(link.Attrs().Alias); ok {
				d.Sandbox, d.ContainerID, d.IfName = api.Sandbox{ContainerID: k.ContainerID}.ShortID(), k.ContainerID, k.IfName
			}
		} else {
			d.HostVeth = "ifindex-" + strconv.Itoa(idx)
		}
	}
	if a.Payload != nil {
		decodePacket(&d, *a.Payload)
	} else {
		d.Proto = "unknown"
	}
	return d
}
