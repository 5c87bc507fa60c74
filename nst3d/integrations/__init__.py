"""Integrations with other tools (nerfstudio). Nothing is imported here: each integration imports what it
needs itself, so that importing one never fails because another tool is missing."""
