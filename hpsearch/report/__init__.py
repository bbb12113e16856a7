"""Reading a study back: tables, statistics, plots, the report document, export."""
