package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// TLS modes of a rule.
const (
	TLSTerminate   = "terminate"
	TLSPassthrough = "passthrough"
)

// DNS modes of a policy.
const (
	DNSAllowlist = "allowlist"
	DNSAll       = "all"
)

// DefaultPorts are the ports a domain rule covers when it names none.
var DefaultPorts = []int{443, 80}

// Policy is one parsed, validated policy file.
type Policy struct {
	Name   string `yaml:"-"`
	DNS    string `yaml:"dns"`
	Egress []Rule `yaml:"egress"`
}

// Rule is one entry of egress.
type Rule struct {
	Domains      []string `yaml:"domains"`
	TCP          []string `yaml:"tcp"`
	Deny         []string `yaml:"deny"`
	Ports        []int    `yaml:"ports"`
	TLS          string   `yaml:"tls"`
	HTTP         *HTTP    `yaml:"http"`
	Inject       []Inject `yaml:"inject"`
	AllowPrivate bool     `yaml:"allowPrivate"`

	// ID is "egress[N]", set by Parse.
	ID string `yaml:"-"`
	// tcp entries split once at parse time.
	tcp []hostPort
}

// HTTP restricts a terminated rule to some methods and paths.
type HTTP struct {
	Methods []string `yaml:"methods"`
	Paths   []string `yaml:"paths"`
}

// Inject sets one request header from a secret.
type Inject struct {
	Header     string `yaml:"header"`
	Value      string `yaml:"value"`
	SecretFile string `yaml:"secretFile"`
	SecretEnv  string `yaml:"secretEnv"`
}

type hostPort struct {
	host string
	addr netip.Addr // valid when host is an IP literal
	port int
}

// Error is one problem in a policy file, with its position.
type Error struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
}

// Errors is every problem found in one file.
type Errors []*Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Parse decodes and validates one policy. file is used in error messages;
// name is the policy's name (the file name without .yaml).
func Parse(file, name string, data []byte) (*Policy, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	p := &Policy{}
	if len(root.Content) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(p); err != nil {
			var te *yaml.TypeError
			if errors.As(err, &te) {
				es := make(Errors, 0, len(te.Errors))
				for _, m := range te.Errors {
					es = append(es, typeError(file, m))
				}
				return nil, es
			}
			return nil, fmt.Errorf("%s: %s", file, strings.TrimPrefix(err.Error(), "yaml: "))
		}
	}
	p.Name = name
	var doc *yaml.Node
	if len(root.Content) > 0 {
		doc = root.Content[0]
	}
	if es := p.validate(file, doc); len(es) > 0 {
		return nil, es
	}
	return p, nil
}

// typeError turns yaml.v3's "line 3: field foo not found in type policy.Rule"
// into an Error naming the line and the field.
func typeError(file, m string) *Error {
	e := &Error{File: file, Field: "?", Msg: m}
	rest, ok := strings.CutPrefix(m, "line ")
	if !ok {
		return e
	}
	num, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return e
	}
	e.Line, _ = strconv.Atoi(num)
	e.Msg = msg
	if f, ok := strings.CutPrefix(msg, "field "); ok {
		if name, _, ok := strings.Cut(f, " not found"); ok {
			e.Field = name
			e.Msg = "unknown field (the schema is in `go doc github.com/paddock-sandbox/paddock/proxy/policy`)"
		}
	} else if strings.Contains(msg, "cannot unmarshal") {
		e.Field = "value"
	}
	return e
}

// child returns the value node of key in mapping n, or n when absent.
func child(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return n
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return n
}

// item returns the i-th element of sequence n, or n.
func item(n *yaml.Node, i int) *yaml.Node {
	if n == nil || n.Kind != yaml.SequenceNode || i >= len(n.Content) {
		return n
	}
	return n.Content[i]
}

func line(n *yaml.Node) int {
	if n == nil {
		return 1
	}
	return n.Line
}

func (p *Policy) validate(file string, doc *yaml.Node) Errors {
	var es Errors
	bad := func(n *yaml.Node, field, format string, a ...any) {
		es = append(es, &Error{File: file, Line: line(n), Field: field, Msg: fmt.Sprintf(format, a...)})
	}
	switch p.DNS {
	case "":
		p.DNS = DNSAllowlist
	case DNSAllowlist, DNSAll:
	default:
		bad(child(doc, "dns"), "dns", "%q is not allowlist or all", p.DNS)
	}
	egress := child(doc, "egress")
	for i := range p.Egress {
		r := &p.Egress[i]
		r.ID = fmt.Sprintf("egress[%d]", i)
		rn := item(egress, i)
		field := func(f string) string { return r.ID + "." + f }
		kinds := 0
		for _, l := range [][]string{r.Domains, r.TCP, r.Deny} {
			if len(l) > 0 {
				kinds++
			}
		}
		if kinds != 1 {
			bad(rn, r.ID, "a rule needs exactly one non-empty list of domains, tcp or deny")
			continue
		}
		for j, d := range append(append([]string{}, r.Domains...), r.Deny...) {
			f := "domains"
			if len(r.Deny) > 0 {
				f = "deny"
			}
			if err := checkDomain(d); err != nil {
				bad(item(child(rn, f), j), fmt.Sprintf("%s[%d]", field(f), j), "%v", err)
			}
		}
		for j, hp := range r.TCP {
			h, err := parseHostPort(hp)
			if err != nil {
				bad(item(child(rn, "tcp"), j), fmt.Sprintf("%s[%d]", field("tcp"), j), "%v", err)
				continue
			}
			r.tcp = append(r.tcp, h)
		}
		for j, port := range r.Ports {
			if port < 1 || port > 65535 {
				bad(item(child(rn, "ports"), j), fmt.Sprintf("%s[%d]", field("ports"), j), "%d is not a port (1-65535)", port)
			}
		}
		if len(r.Domains) == 0 && (len(r.Ports) > 0 || r.TLS != "" || r.HTTP != nil || len(r.Inject) > 0) {
			bad(rn, r.ID, "ports, tls, http and inject apply to domain rules only")
			continue
		}
		if len(r.Deny) > 0 && r.AllowPrivate {
			bad(child(rn, "allowPrivate"), field("allowPrivate"), "a deny rule cannot allow anything")
		}
		if len(r.Domains) == 0 {
			continue
		}
		if len(r.Ports) == 0 {
			r.Ports = DefaultPorts
		}
		switch r.TLS {
		case "":
			r.TLS = TLSTerminate
		case TLSTerminate:
		case TLSPassthrough:
			if r.HTTP != nil || len(r.Inject) > 0 {
				bad(child(rn, "tls"), field("tls"), "passthrough cannot apply http or inject (nothing is decrypted); use terminate")
			}
		default:
			bad(child(rn, "tls"), field("tls"), "%q is not terminate or passthrough", r.TLS)
		}
		if r.HTTP != nil {
			hn := child(rn, "http")
			for j, m := range r.HTTP.Methods {
				if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " \t/") {
					bad(item(child(hn, "methods"), j), fmt.Sprintf("%s[%d]", field("http.methods"), j), "%q is not an upper-case HTTP method such as GET", m)
				}
			}
			for j, pt := range r.HTTP.Paths {
				if !strings.HasPrefix(pt, "/") && !strings.HasPrefix(pt, "*") {
					bad(item(child(hn, "paths"), j), fmt.Sprintf("%s[%d]", field("http.paths"), j), "%q must start with / or *", pt)
				}
			}
		}
		in := child(rn, "inject")
		for j, inj := range r.Inject {
			jn := item(in, j)
			f := fmt.Sprintf("%s[%d]", field("inject"), j)
			switch {
			case inj.Header == "" || strings.ContainsAny(inj.Header, " :\t\r\n"):
				bad(jn, f+".header", "%q is not a header name", inj.Header)
			case (inj.SecretFile == "") == (inj.SecretEnv == ""):
				bad(jn, f, "needs exactly one of secretFile or secretEnv")
			case inj.Value != "" && !strings.Contains(inj.Value, "{secret}"):
				bad(child(jn, "value"), f+".value", "%q does not contain {secret}", inj.Value)
			case inj.SecretFile != "" && !strings.HasPrefix(inj.SecretFile, "/"):
				bad(child(jn, "secretFile"), f+".secretFile", "%q is not an absolute path", inj.SecretFile)
			}
			if r.Inject[j].Value == "" {
				r.Inject[j].Value = "{secret}"
			}
		}
	}
	return es
}

func checkDomain(d string) error {
	name := strings.TrimPrefix(d, "*.")
	if strings.Contains(name, "*") {
		return fmt.Errorf("%q: a wildcard is only allowed as a leading \"*.\"", d)
	}
	if name == "" || len(name) > 253 || strings.HasSuffix(name, ".") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("%q is not a domain name", d)
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("%q is not a domain name (empty or over-long label)", d)
		}
		for _, c := range l {
			if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				return fmt.Errorf("%q is not a domain name (character %q)", d, c)
			}
		}
	}
	return nil
}

func parseHostPort(s string) (hostPort, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q is not host:port", s)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return hostPort{}, fmt.Errorf("%q: port %q is not 1-65535", s, p)
	}
	hp := hostPort{host: strings.ToLower(h), port: port}
	if a, err := netip.ParseAddr(h); err == nil {
		hp.addr = a.Unmap()
		return hp, nil
	}
	if strings.HasPrefix(h, "*.") {
		return hostPort{}, fmt.Errorf("%q: tcp rules take exact names or addresses, not wildcards", s)
	}
	if err := checkDomain(h); err != nil {
		return hostPort{}, err
	}
	return hp, nil
}

// MatchDomain reports whether host matches pattern (exact or "*.suffix"),
// case-insensitively, ignoring a trailing dot on host.
func MatchDomain(pattern, host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	pattern = strings.ToLower(pattern)
	if suf, ok := strings.CutPrefix(pattern, "*."); ok {
		return len(host) > len(suf)+1 && strings.HasSuffix(host, "."+suf)
	}
	return host == pattern
}

// matchGlob matches s against a pattern where "*" stands for any run of
// characters.
func matchGlob(pattern, s string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	last := parts[len(parts)-1]
	return len(s) >= len(last) && strings.HasSuffix(s, last)
}

// Query is what the proxy asks about. Method == "" asks at connection level
// (TLS SNI before any request): is there any rule for this host and port.
type Query struct {
	Host   string
	Port   int
	Method string
	Path   string
}

// Decision is the answer to a Query.
type Decision struct {
	Allow bool
	// Rule is the rule that allowed or denied, nil when no rule matched.
	Rule *Rule
	// Reason is a short human text for denials ("no rule allows this host").
	Reason string
}

// RuleID is the deciding rule's id, or "" when none matched.
func (d Decision) RuleID() string {
	if d.Rule == nil {
		return ""
	}
	return d.Rule.ID
}

func (r *Rule) matchesHost(host string, port int) bool {
	for _, d := range r.Domains {
		if MatchDomain(d, host) {
			for _, p := range r.Ports {
				if p == port {
					return true
				}
			}
		}
	}
	return false
}

func (r *Rule) matchesRequest(method, p string) bool {
	if r.HTTP == nil {
		return true
	}
	if len(r.HTTP.Methods) > 0 {
		ok := false
		for _, m := range r.HTTP.Methods {
			ok = ok || m == method
		}
		if !ok {
			return false
		}
	}
	if len(r.HTTP.Paths) > 0 {
		ok := false
		for _, pt := range r.HTTP.Paths {
			ok = ok || matchGlob(pt, p)
		}
		return ok
	}
	return true
}

// Decide evaluates q: a deny rule naming the host wins; else the first domain
// rule that matches host, port and (for requests) method and path allows.
func (p *Policy) Decide(q Query) Decision {
	for i := range p.Egress {
		r := &p.Egress[i]
		for _, d := range r.Deny {
			if MatchDomain(d, q.Host) {
				return Decision{Rule: r, Reason: "denied by " + r.ID}
			}
		}
	}
	hostKnown := false
	for i := range p.Egress {
		r := &p.Egress[i]
		if !r.matchesHost(q.Host, q.Port) {
			continue
		}
		hostKnown = true
		if q.Method == "" {
			return Decision{Allow: true, Rule: r}
		}
		if r.TLS == TLSPassthrough {
			continue
		}
		if !canonicalPath(q.Path) {
			return Decision{Reason: "path is not canonical (contains . or .. segments or //)"}
		}
		if r.matchesRequest(q.Method, q.Path) {
			return Decision{Allow: true, Rule: r}
		}
	}
	if hostKnown {
		return Decision{Reason: fmt.Sprintf("no rule allows %s %s on this host", q.Method, q.Path)}
	}
	return Decision{Reason: fmt.Sprintf("no rule allows this host on port %d", q.Port)}
}

func canonicalPath(p string) bool {
	if p == "" || p == "*" {
		return true
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// DecideTCP evaluates an opaque connection to dst. resolve looks a tcp rule's
// name up; a name matches when dst's address is among its addresses. A host
// named by CONNECT (target != "") must match a tcp entry's name exactly.
func (p *Policy) DecideTCP(dst netip.AddrPort, target string, resolve func(host string) []netip.Addr) Decision {
	for i := range p.Egress {
		r := &p.Egress[i]
		for _, d := range r.Deny {
			if target != "" && MatchDomain(d, target) {
				return Decision{Rule: r, Reason: "denied by " + r.ID}
			}
		}
	}
	a := dst.Addr().Unmap()
	for i := range p.Egress {
		r := &p.Egress[i]
		for _, hp := range r.tcp {
			if hp.port != int(dst.Port()) {
				continue
			}
			if target != "" {
				if strings.EqualFold(strings.TrimSuffix(target, "."), hp.host) {
					return Decision{Allow: true, Rule: r}
				}
				continue
			}
			if hp.addr.IsValid() {
				if hp.addr == a {
					return Decision{Allow: true, Rule: r}
				}
				continue
			}
			if resolve == nil {
				continue
			}
			for _, ra := range resolve(hp.host) {
				if ra.Unmap() == a {
					return Decision{Allow: true, Rule: r}
				}
			}
		}
	}
	return Decision{Reason: fmt.Sprintf("no tcp rule allows %s (opaque TCP needs an explicit host:port rule)", dst)}
}

// AllowsName reports whether DNS for name is allowed: in allowlist mode, when
// an allow rule (domains or a tcp name) names it and no deny rule does.
func (p *Policy) AllowsName(name string) (bool, *Rule) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	for i := range p.Egress {
		r := &p.Egress[i]
		for _, d := range r.Deny {
			if MatchDomain(d, name) {
				return false, r
			}
		}
	}
	if p.DNS == DNSAll {
		return true, nil
	}
	for i := range p.Egress {
		r := &p.Egress[i]
		for _, d := range r.Domains {
			if MatchDomain(d, name) {
				return true, r
			}
		}
		for _, hp := range r.tcp {
			if !hp.addr.IsValid() && hp.host == name {
				return true, r
			}
		}
	}
	return false, nil
}
