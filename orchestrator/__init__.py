"""Ballast: the dom0 side of a memory orchestrator for Xen hosts.

Sub-packages, one per concern: ``xenstore`` (the only code that talks
xenstore), ``control`` (the pure control law), ``store`` (the only code that
imports SQLAlchemy), ``cli`` (thin Typer shells over the libraries).
"""

__version__ = "0.1.0"
