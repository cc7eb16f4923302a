"""Tenancy: tenants, memberships, invitations, provisioning of tenant schemas."""
