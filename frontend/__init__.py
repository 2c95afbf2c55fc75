"""The Beholder dashboard: ES modules and CSS served by beholder_plugin.plugin (no build step)."""
