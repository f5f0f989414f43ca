"""What a run document is shown as: `summary` (the terminal table, the lines under it and the verdict),
`generative` (the decoders' table), `checks` (a check in words), `files` (the JSON, Markdown, HTML and
pytest-benchmark reports)."""
