"""Moved: ``python -m cnn.bench.serve`` (this shim keeps old commands working)."""
import runpy

runpy.run_module("cnn.bench.serve", run_name="__main__", alter_sys=True)
