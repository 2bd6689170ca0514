"""One module per `deqdist` command, as Levanter keeps one per entry point in `levanter/main/`.

Each module has `add_parser(commands)`, which declares the command's argparse parser, and
`run(args)`, which checks what argparse cannot and runs the command over the library
(train/, store/, runtime/, bench/ ...). `deqdist.cli` only builds the parsers and dispatches.
"""
