"""``python -m winclip_cli`` runs the command-line tool."""

from .cli import app

app(prog_name="winclip")
