package conflist

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// PluginType is the CNI "type" of the paddock plugin; an entry of this type
// in a conflist is what Chain adds and Unchain removes.
const PluginType = "paddock"

// CNIVersion is the version of standalone conflists: podman 4.3.1 and
// containerd 1.6 refuse 1.1.0 results.
const CNIVersion = "1.0.0"

// DefaultSubnet is the host-local range of a standalone conflist.
var DefaultSubnet = netip.MustParsePrefix("10.208.0.0/16")

// Entry is the paddock plugin object placed in a conflist.
type Entry struct {
	Type         string `json:"type"`
	Policy       string `json:"policy"`
	DaemonSocket string `json:"daemonSocket"`
}

// NewEntry is the paddock plugin entry for a policy and paddockd socket.
func NewEntry(policy, daemonSocket string) Entry {
	return Entry{Type: PluginType, Policy: policy, DaemonSocket: daemonSocket}
}

// span is a value's byte range [start, end) in a document.
type span struct{ start, end int }

// doc is the outline of a conflist: its name and where each plugin object
// and the plugins array's closing bracket sit in the bytes.
type doc struct {
	name      string
	plugins   []span
	types     []string
	openEnd   int // just past the plugins array's '['
	closePos  int // the plugins array's ']'
	hasType   bool
	hasPlugin bool
}

// parse outlines data, which must be one JSON object.
func parse(data []byte) (*doc, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	d := &doc{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		key := t.(string)
		switch key {
		case "plugins":
			if d.hasPlugin {
				return nil, errors.New(`"plugins" is given twice`)
			}
			d.hasPlugin = true
			if err := d.parsePlugins(dec); err != nil {
				return nil, err
			}
			continue
		case "type":
			d.hasType = true
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		if key == "name" {
			if err := json.Unmarshal(raw, &d.name); err != nil {
				return nil, fmt.Errorf(`"name" is not a string: %s`, raw)
			}
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: data after the top-level object")
	}
	return d, nil
}

func (d *doc) parsePlugins(dec *json.Decoder) error {
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return errors.New(`"plugins" is not a list`)
	}
	d.openEnd = int(dec.InputOffset())
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("invalid JSON in plugins: %w", err)
		}
		end := int(dec.InputOffset())
		var p struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("plugins[%d] is not an object with a string \"type\": %s", len(d.plugins), raw)
		}
		d.plugins = append(d.plugins, span{end - len(raw), end})
		d.types = append(d.types, p.Type)
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("invalid JSON in plugins: %w", err)
	}
	d.closePos = int(dec.InputOffset()) - 1
	return nil
}

// Network is the "name" of the conflist or single-plugin conf in data.
func Network(data []byte) (string, error) {
	d, err := parse(data)
	if err != nil {
		return "", err
	}
	return d.name, nil
}

// ErrNotList says a chain target is a single-plugin .conf, which has no
// plugins list to chain onto.
var ErrNotList = errors.New(`it is a single-plugin configuration, not a conflist (no "plugins" list): convert it to a conflist ({"cniVersion", "name", "plugins": [ <the plugin> ]}, file name ending in .conflist) and run again`)

// unroutedPrimaries are primary plugin types whose sandbox interface is not
// a routed veth pair, each with the reason paddock cannot enforce on it.
// The plugin refuses them at ADD (plugin/chained.go); chaining onto one
// would make every ADD of the network fail.
var unroutedPrimaries = map[string]string{
	"bridge":      "its veth is a bridge port: the IP layer sees the bridge as the input interface and frames between sandboxes are switched, never routed",
	"flannel":     "it delegates to the bridge plugin, whose veths are bridge ports",
	"weave-net":   "its veths are ports of the weave bridge",
	"ovs":         "its veths are Open vSwitch ports, switched outside the IP layer",
	"macvlan":     "the sandbox's interface has no node-side peer",
	"ipvlan":      "the sandbox's interface has no node-side peer",
	"vlan":        "the sandbox's interface has no node-side peer",
	"host-device": "it moves a node device into the sandbox: there is no node-side peer",
	"sriov":       "it hands the sandbox a virtual function: there is no node-side peer",
	"ib-sriov":    "it hands the sandbox a virtual function: there is no node-side peer",
	"dummy":       "the sandbox's interface has no node-side peer",
	"tap":         "the sandbox's interface is a tap device, not a veth",
	"loopback":    "it configures only the loopback interface",
	"bond":        "it bonds devices moved into the sandbox: there is no node-side peer",
	"win-bridge":  "it is a Windows plugin",
	"win-overlay": "it is a Windows plugin",
}

// PrimaryError says a conflist's first plugin does not give the routed veth
// pair paddock chained mode needs.
type PrimaryError struct {
	Type   string // the primary plugin's "type"
	Reason string // why paddock cannot enforce on its interface
}

func (e *PrimaryError) Error() string {
	return fmt.Sprintf("its primary plugin is %q and paddock cannot enforce on that (%s), so every ADD on this network would fail: chain onto a network whose first plugin gives a routed veth pair (ptp, or a routed-veth primary such as calico), or install standalone (leave out --chain)", e.Type, e.Reason)
}

// checkPrimary refuses a conflist whose primary (its first plugin, unless
// that is paddock itself) is known not to give a routed veth pair.
func (d *doc) checkPrimary() error {
	if len(d.types) == 0 || d.types[0] == PluginType {
		return nil
	}
	if reason, ok := unroutedPrimaries[d.types[0]]; ok {
		return &PrimaryError{Type: d.types[0], Reason: reason}
	}
	return nil
}

// index is the position of the paddock entry, or -1.
func (d *doc) index() int {
	for i, t := range d.types {
		if t == PluginType {
			return i
		}
	}
	return -1
}

// Chain returns data with e appended to its plugins list, and whether that
// changed anything: a conflist that already holds an identical paddock
// entry comes back unchanged, one with a different paddock entry gets it
// replaced in place. Everything else in data is kept byte for byte. A
// conflist whose primary plugin gives no routed veth pair is refused with a
// *PrimaryError, even when it already holds a paddock entry.
func Chain(data []byte, e Entry) ([]byte, bool, error) {
	d, err := parse(data)
	if err != nil {
		return nil, false, err
	}
	if !d.hasPlugin {
		if d.hasType {
			return nil, false, ErrNotList
		}
		return nil, false, errors.New(`no "plugins" list: not a CNI conflist`)
	}
	if err := d.checkPrimary(); err != nil {
		return nil, false, err
	}
	if i := d.index(); i >= 0 {
		s := d.plugins[i]
		if sameEntry(data[s.start:s.end], e) {
			return data, false, nil
		}
		indent, unit := layout(data, s)
		obj, err := format(e, indent, unit)
		if err != nil {
			return nil, false, err
		}
		return splice(data, s.start, s.end, obj), true, nil
	}
	if len(d.plugins) == 0 {
		obj, err := format(e, "", "")
		if err != nil {
			return nil, false, err
		}
		return splice(data, d.openEnd, d.closePos, obj), true, nil
	}
	last := d.plugins[len(d.plugins)-1]
	indent, unit := layout(data, last)
	obj, err := format(e, indent, unit)
	if err != nil {
		return nil, false, err
	}
	sep := []byte(",")
	if unit != "" || lineStart(data, last.start) {
		sep = append(sep, '\n')
		sep = append(sep, indent...)
	} else if last.start > 0 && data[last.start-1] == ' ' {
		sep = append(sep, ' ')
	}
	return splice(data, last.end, last.end, append(sep, obj...)), true, nil
}

// Unchain returns data without its paddock entry, and whether there was
// one. Removing what Chain added gives back the bytes Chain was given.
func Unchain(data []byte) ([]byte, bool, error) {
	d, err := parse(data)
	if err != nil {
		return nil, false, err
	}
	i := d.index()
	if i < 0 {
		return data, false, nil
	}
	s := d.plugins[i]
	switch {
	case i > 0:
		// The separator before the entry goes with it.
		return splice(data, d.plugins[i-1].end, s.end, nil), true, nil
	case len(d.plugins) > 1:
		return splice(data, s.start, d.plugins[1].start, nil), true, nil
	default:
		return splice(data, s.start, s.end, nil), true, nil
	}
}

// HasEntry reports whether the conflist in data holds a paddock entry.
func HasEntry(data []byte) (bool, error) {
	d, err := parse(data)
	if err != nil {
		return false, err
	}
	return d.index() >= 0, nil
}

// Standalone is a conflist named network whose only plugin is paddock, with
// host-local IPAM over subnet and a default route through the host veth.
func Standalone(network string, e Entry, subnet netip.Prefix) ([]byte, error) {
	if network == "" {
		return nil, errors.New("network name is empty")
	}
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return nil, fmt.Errorf("subnet %s: want an IPv4 prefix of /30 or larger (paddock enforces IPv4 only)", subnet)
	}
	type ipam struct {
		Type   string                `json:"type"`
		Ranges [][]map[string]string `json:"ranges"`
		Routes []map[string]string   `json:"routes"`
	}
	type plugin struct {
		Entry
		IPAM ipam `json:"ipam"`
	}
	conf := struct {
		CNIVersion string   `json:"cniVersion"`
		Name       string   `json:"name"`
		Plugins    []plugin `json:"plugins"`
	}{CNIVersion, network, []plugin{{e, ipam{
		Type:   "host-local",
		Ranges: [][]map[string]string{{{"subnet": subnet.Masked().String()}}},
		Routes: []map[string]string{{"dst": "0.0.0.0/0"}},
	}}}}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// sameEntry reports whether raw, a paddock plugin object, says what e says
// and nothing else.
func sameEntry(raw []byte, e Entry) bool {
	var have map[string]any
	if json.Unmarshal(raw, &have) != nil {
		return false
	}
	want := map[string]any{"type": e.Type, "policy": e.Policy, "daemonSocket": e.DaemonSocket}
	if len(have) != len(want) {
		return false
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// layout is the indentation of the line a plugin object starts on and the
// unit its members are indented by ("" for an object written on one line).
func layout(data []byte, s span) (indent, unit string) {
	ls := bytes.LastIndexByte(data[:s.start], '\n') + 1
	indent = string(data[ls:s.start])
	if strings.TrimLeft(indent, " \t") != "" {
		indent = ""
	}
	obj := data[s.start:s.end]
	nl := bytes.IndexByte(obj, '\n')
	if nl < 0 {
		return indent, ""
	}
	rest := obj[nl+1:]
	inner := rest[:len(rest)-len(bytes.TrimLeft(rest, " \t"))]
	unit = strings.TrimPrefix(string(inner), indent)
	if unit == "" {
		unit = "  "
	}
	return indent, unit
}

// lineStart reports whether only whitespace precedes pos on its line.
func lineStart(data []byte, pos int) bool {
	ls := bytes.LastIndexByte(data[:pos], '\n')
	return ls >= 0 && len(bytes.TrimLeft(data[ls+1:pos], " \t")) == 0
}

// format writes e as an object laid out like its neighbours.
func format(e Entry, indent, unit string) ([]byte, error) {
	if unit == "" {
		return json.Marshal(e)
	}
	return json.MarshalIndent(e, indent, unit)
}

func splice(data []byte, from, to int, insert []byte) []byte {
	out := make([]byte, 0, len(data)-(to-from)+len(insert))
	out = append(out, data[:from]...)
	out = append(out, insert...)
	return append(out, data[to:]...)
}
