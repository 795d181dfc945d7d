"""The ``cnn`` command: one entry point for the command-line tools.

    cnn train [...]      same as python -m cnn.train [...]
    cnn evaluate [...]   same as python -m cnn.evaluate [...]
    cnn predict [...]    same as python -m cnn.predict [...]
    cnn export [...]     same as python -m cnn.export [...]
    cnn bench [...]      same as python -m cnn.bench [...]
    cnn serve [...]      gunicorn with the packaged settings (cnn.serve)
    cnn --version

``cnn COMMAND --help`` shows a command's own flags. Everything after COMMAND is
handed unchanged to that module's ``main(argv)``, so the two spellings cannot
drift apart. ``python -m cnn`` is the same command without installing the
console script.
"""
import argparse
import importlib
import sys

from cnn import __version__

# command -> (module, one line for --help); modules are imported only when run:
# cnn.bench and cnn.export pull in much that the others do not need.
COMMANDS = {
    "train": ("cnn.train", "train a network and write its weights file"),
    "evaluate": ("cnn.evaluate",
                 "accuracy, confusion matrix and per-class scores of a weights file"),
    "predict": ("cnn.predict", "classify image files with a weights file"),
    "export": ("cnn.export", "write a weights file as an ONNX graph"),
    "bench": ("cnn.bench", "time the kernels, training and peers (PyTorch, ONNX Runtime)"),
    "serve": ("cnn.serve", "serve a folder of weights files over HTTP (gunicorn)"),
}


def build_parser():
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="cnn", usage="cnn [-h] [--version] COMMAND [ARGS ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convolutional networks on the CPU.",
        epilog=f"commands:\n{listing}\n\n'cnn COMMAND --help' shows a command's options.")
    p.add_argument("--version", action="version", version=f"cnn {__version__}")
    p.add_argument("command", metavar="COMMAND", choices=list(COMMANDS),
                   help=", ".join(COMMANDS))
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
    else:
        # --help, --version, no command or an unknown one: argparse answers and
        # exits; what remains is e.g. `cnn -- train ...`
        args, rest = build_parser().parse_known_args(argv)
        command = args.command
    return importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
