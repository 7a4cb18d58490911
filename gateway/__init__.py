"""The gateway: Envoy's config (envoy.yaml, rendered by gateway.render) and
the ext_authz service that has auth check every token."""
