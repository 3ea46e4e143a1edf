from lrtune.cli.main import run

run()
