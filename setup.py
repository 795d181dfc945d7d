"""Build the Cython kernels in pyx/ into modules of the cnn package (cnn._conv, ...).

Compiler directives live here, once, for every module. OpenMP is used when the
compiler supports it; set CNN_OPENMP=0 to build without it (prange then runs
serially and everything else behaves the same).
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,  # shapes are validated in Python before any kernel runs
    "wraparound": False,
    "initializedcheck": False,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}


def openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or empty lists if unusable."""
    if os.environ.get("CNN_OPENMP", "1") == "0":
        return [], []
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return [], []
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        c = Path(tmp, "t.c")
        c.write_text(src)
        r = subprocess.run([cc, "-fopenmp", str(c), "-o", str(Path(tmp, "t"))],
                           capture_output=True)
    if r.returncode != 0:
        print("cnn: compiler has no OpenMP; building serial kernels", file=sys.stderr)
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


omp_compile, omp_link = openmp_flags()
# -O3 and native-free flags: wheels must run on any x86-64, so no -march=native.
compile_args = ["-O3", "-fno-math-errno", "-Wno-unused-function"] + omp_compile

extensions = [
    Extension(
        f"cnn._{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[numpy.get_include()],
        extra_compile_args=compile_args,
        extra_link_args=omp_link,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted((HERE / "pyx").glob("*.pyx"))
    # Development knob: CNN_BUILD_ONLY=conv,pool rebuilds just those modules.
    if not os.environ.get("CNN_BUILD_ONLY")
    or pyx.stem in os.environ["CNN_BUILD_ONLY"].split(",")
]


class cythonize_then_build_ext(build_ext):
    """Cythonize when the extensions are built, not whenever setup.py runs: an
    sdist then carries the .pyx sources alone (not .c files made by whichever
    Cython was at hand), and `python -m build --sdist` skips the ~9 s of it."""

    def run(self):
        from Cython.Build import cythonize  # a build requirement (pyproject.toml)

        generated = cythonize(self.extensions, compiler_directives=DIRECTIVES,
                              compile_time_env={"CNN_OPENMP": bool(omp_compile)})
        for ext, c_ext in zip(self.extensions, generated):
            ext.sources = c_ext.sources
        super().run()


setup(ext_modules=extensions, cmdclass={"build_ext": cythonize_then_build_ext})
