"""SCIM 2.0 provisioning (RFC 7643, RFC 7644): per-tenant tokens, Users and Groups, groups
mapped to roles (docs/auth.md, "SCIM 2.0")."""
