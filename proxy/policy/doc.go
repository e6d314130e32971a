// Package policy parses, validates and evaluates paddock egress policies: one
// YAML file per policy, NAME.yaml in the policy directory, named by a
// sandbox's Policy field. A sandbox whose policy does not exist (or never
// parsed) is denied everything.
//
// Schema (unknown fields are errors; `paddock policy check FILE` reports them
// with the line and the field):
//
//	dns: allowlist            # allowlist (default): only names the egress rules
//	                          # name resolve; "all": any name resolves (egress is
//	                          # still decided by the rules)
//	egress:                   # evaluated in order; deny rules win over allow rules
//	  - domains: [api.example.com, "*.example.org"]
//	                          # exact names, or "*.suffix" for any name below the
//	                          # suffix (not the suffix itself)
//	    ports: [443, 80]      # default 443 and 80
//	    tls: terminate        # terminate (default): decrypt with the node CA,
//	                          # apply http and inject; passthrough: decide by SNI
//	                          # only, splice bytes, nothing decrypted (pinned
//	                          # clients); http and inject are not allowed then
//	    http:
//	      methods: [GET, HEAD] # default: any method
//	      paths: ["/org/*"]    # "*" matches any run of characters, "/" included;
//	                           # default: any path
//	    inject:               # headers set on every request this rule allows;
//	                          # a value the sandbox sent for the header is replaced;
//	                          # only over TLS: plain HTTP under this rule gets 403
//	      - header: Authorization
//	        value: "Bearer {secret}"   # default "{secret}"
//	        secretFile: /etc/paddock/secrets/token  # read on every request (rotation
//	                          # needs no restart); or secretEnv: NAME, a variable
//	                          # of the proxy process (paddockd passes its
//	                          # PADDOCK_SECRET_* variables through)
//	    allowPrivate: false   # true lets this rule reach loopback, private,
//	                          # link-local, CGNAT and node addresses
//	  - tcp: ["db.internal.example:5432", "203.0.113.7:6379"]
//	                          # opaque TCP (neither TLS nor HTTP) to host:port only;
//	                          # a name matches when it resolves to the address the
//	                          # sandbox dialled
//	  - deny: [evil.example.org, "*.tracker.example"]
//	                          # denied whatever other rules say
//
// A rule has exactly one of domains, tcp or deny. Rules are reported as
// "egress[N]" (zero-based) in 403 bodies and audit lines.
package policy
