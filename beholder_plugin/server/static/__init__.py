"""The Beholder dashboard: ES modules and CSS served by beholder_plugin.server.plugin (no build step)."""
