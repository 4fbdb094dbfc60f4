"""Console commands: export the coordinators' corrections as labelled data."""

import json

import click
from flask.cli import with_appcontext

from ..db import get_db
from .actions import export_corrections, labelled_examples


@click.command("export-corrections")
@with_appcontext
@click.option(
    "--output",
    "-o",
    type=click.File("w", encoding="utf-8"),
    default="-",
    show_default=True,
    help="File to write to.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "tsv"]),
    default="jsonl",
    show_default=True,
    help="jsonl: every correction with before and after; tsv: text, category and urgency "
    "per corrected request, in the layout of bench/data/requests_en.tsv.",
)
@click.option(
    "--field",
    type=click.Choice(["category", "urgency", "transcript"]),
    multiple=True,
    help="Only corrections of this field (repeatable; jsonl only).",
)
def export_corrections_command(output, fmt, field):
    """Write coordinators' corrections as labelled data for improving the category phrase lists.

    Example: flask --app app export-corrections --format tsv -o corrected.tsv
    """
    db = get_db()
    count = 0
    if fmt == "tsv":
        output.write("text\tcategory\turgency\n")
        for example in labelled_examples(db):
            output.write("\t".join(example) + "\n")
            count += 1
    else:
        for row in export_corrections(db):
            if field and row["field"] not in field:
                continue
            output.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    click.echo(f"exported {count} {'examples' if fmt == 'tsv' else 'corrections'}", err=True)


def init_app(app):
    """Register the console's commands."""
    app.cli.add_command(export_corrections_command)
