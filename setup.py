"""Build the mandatory C core: one Cython extension over csrc/*.c.

Environment switches:
  MQLITE_DEBUG=1     -O0 -g, assertions on
  MQLITE_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (implies debug;
                     run Python with LD_PRELOAD=$(gcc -print-file-name=libasan.so))
A compile error fails the install: there is no pure-Python fallback.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("MQLITE_DEBUG") == "1" or os.environ.get("MQLITE_SANITIZE") == "1"
cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-function", "-D_GNU_SOURCE"]
ldflags: list[str] = []
if debug:
    cflags += ["-O0", "-g3", "-UNDEBUG"]
else:
    cflags += ["-O3"]
if os.environ.get("MQLITE_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cflags += san
    ldflags += san

ext = Extension(
    "mqlite._core",
    sources=["src/mqlite/_core.pyx", *sorted(glob.glob("csrc/*.c"))],
    include_dirs=["csrc"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)
# The Kafka backend's per-record producer path (src/mqlite/kafka/_fast.pyx, D37): Python
# objects only, no csrc.
kafka_ext = Extension(
    "mqlite.kafka._fast",
    sources=["src/mqlite/kafka/_fast.pyx"],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(
    ext_modules=cythonize(
        [ext, kafka_ext],
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
