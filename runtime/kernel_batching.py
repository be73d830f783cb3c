"""Build the C++ kernels of one inductor graph as a few shared libraries instead of one each.

On the CPU, inductor writes every kernel of a graph as its own C++ file and builds it into its
own Python extension with g++. Each build pays a fixed cost that has nothing to do with the kernel:
mapping the 155 MB precompiled header, redoing the template instantiations it leaves pending,
linking against libtorch. On this project's 2-core VM that fixed cost is ~0.75 s of a typical
kernel's 0.8-0.9 s, so the 77 kernels of a CMS training step took 41 s of wall time on two g++
workers, while the same 77 kernels in one file built in 4.7 s (scratch measurement, torch
2.13.0+cpu, g++ with inductor's own flags).

`batch_kernel_builds()` makes `AsyncCompile.cpp_pybinding`, which the generated wrapper module
calls once per kernel when it is loaded, hand back a placeholder instead of starting a build. The
wrapper then calls `AsyncCompile.wait(globals())`; there the pending kernels are split into one
group per compile worker, each group is built as one extension (every kernel in a namespace of its
own, renamed entry points, one table of Python bindings) through inductor's own
`CppPythonBindingsCodeCache.load_async` (same flags, same cache directory, same locking), and the
placeholders in the wrapper's globals are replaced by the group's functions. The kernels' source
is untouched, so the generated code runs exactly as before; only how many times g++ starts changes.

A kernel whose source this module does not recognise (anything but one `extern "C" void kernel(`
and preprocessor lines other than #include and #pragma) is built on its own, the way inductor
builds it; a group whose build fails is rebuilt kernel by kernel the same way, so batching can
make a compile slower but never wrong. `NESTC_BATCH_KERNELS=0` turns it off.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

ENTRY = re.compile(r'extern\s+"C"\s+void\s+kernel\(')
_PATCHED = "_nestc_batched"


def batch_kernel_builds() -> bool:
    """Patch inductor's AsyncCompile to batch its C++ kernel builds; True when active. Idempotent;
    does nothing (False) when turned off by NESTC_BATCH_KERNELS=0 or when this torch lacks the
    hooks it relies on."""
    if not enabled():
        return False
    hooks = _hooks()
    if hooks is None:
        return False
    AsyncCompile, get_compile_threads, Bindings = hooks
    if getattr(AsyncCompile, _PATCHED, False):
        return True
    original_pybinding, original_wait = AsyncCompile.cpp_pybinding, AsyncCompile.wait

    def cpp_pybinding(self, argtypes, source_code):
        if not enabled() or not batchable(source_code):
            return original_pybinding(self, argtypes, source_code)
        batch = self.__dict__.get("_nestc_batch")
        if batch is None:
            batch = self.__dict__["_nestc_batch"] = KernelBatch(self, get_compile_threads, Bindings)
        return batch.add(list(argtypes), source_code)

    def wait(self, scope):
        batch = self.__dict__.pop("_nestc_batch", None)
        if batch is not None:
            batch.build()
            for key, value in list(scope.items()):
                if isinstance(value, BatchedKernel):
                    scope[key] = value.result()
        return original_wait(self, scope)

    AsyncCompile.cpp_pybinding = cpp_pybinding
    AsyncCompile.wait = wait
    setattr(AsyncCompile, _PATCHED, True)
    return True


def enabled() -> bool:
    """Off when NESTC_BATCH_KERNELS=0 (read at every kernel, so it also stops a patched process)."""
    return os.environ.get("NESTC_BATCH_KERNELS", "1") != "0"


def _hooks():
    """(AsyncCompile, get_compile_threads, CppPythonBindingsCodeCache), or None when this torch
    lacks any of the entry points the patch uses."""
    try:
        from torch._inductor.async_compile import AsyncCompile, get_compile_threads
        from torch._inductor.codecache import CppPythonBindingsCodeCache
    except ImportError:
        return None
    needed = (hasattr(AsyncCompile, "cpp_pybinding") and hasattr(AsyncCompile, "wait")
              and hasattr(CppPythonBindingsCodeCache, "load_async")
              and hasattr(CppPythonBindingsCodeCache, "load_pybinding_async")
              and hasattr(CppPythonBindingsCodeCache, "load_pybinding"))
    return (AsyncCompile, get_compile_threads, CppPythonBindingsCodeCache) if needed else None


def batchable(source: str) -> bool:
    """One C entry point named `kernel`, and no preprocessor state a later kernel could see."""
    if len(ENTRY.findall(source)) != 1 or source.count('extern "C"') != 1:
        return False
    for line in source.splitlines():
        s = line.lstrip()
        if s.startswith("#") and not (s.startswith("#include") or s.startswith("#pragma")):
            return False
    return True


def combined_source(kernels: list[tuple[list[str], str]]) -> str:
    """One translation unit for several kernels: their #includes once at the top, each kernel's
    code in `namespace nestc_k<i>` with its entry point a plain C++ function there, then one
    Python method per kernel (`kernel_<i>`) in a module whose init function is PyInit_kernel,
    the name inductor's loader looks for."""
    includes: list[str] = []
    bodies = []
    for i, (_, source) in enumerate(kernels):
        kept = []
        for line in source.splitlines():
            if line.lstrip().startswith("#include"):
                if line.strip() not in includes:
                    includes.append(line.strip())
            else:
                kept.append(line)
        body = ENTRY.sub("void kernel(", "\n".join(kept), count=1)
        bodies.append(f"namespace nestc_k{i} {{\n{body}\n}}  // namespace nestc_k{i}\n")
    methods, table = [], []
    for i, (argtypes, _) in enumerate(kernels):
        args = ", ".join(f"nestc_arg<{t.replace('const ', '')}>(args, {n})" for n, t in enumerate(argtypes))
        methods.append(
            f"static PyObject* kernel_{i}_py(PyObject*, PyObject* args) {{\n"
            f"    if (!PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != {len(argtypes)}) {{\n"
            f'        PyErr_SetString(PyExc_TypeError, "kernel_{i} takes a tuple of {len(argtypes)} arguments");\n'
            f"        return nullptr;\n    }}\n"
            f"    try {{\n        nestc_k{i}::kernel({args});\n        Py_RETURN_NONE;\n"
            f"    }} catch (std::exception const& e) {{\n"
            f"        PyErr_SetString(PyExc_RuntimeError, e.what());\n        return nullptr;\n    }}\n}}\n")
        table.append(f'    {{"kernel_{i}", kernel_{i}_py, METH_VARARGS, ""}},')
    return "\n".join(includes) + "\n\n" + "\n".join(bodies) + _BINDINGS_HEAD + "\n".join(methods) + (
        "\nstatic PyMethodDef nestc_methods[] = {\n" + "\n".join(table) + "\n    {nullptr, nullptr, 0, nullptr}};\n"
        + _BINDINGS_TAIL)


# Python glue shared by every kernel of a batch. Tensor arguments arrive as Python objects; the
# data pointer is read through the helper torch's dynamo guards export (its address is passed in
# _TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR by inductor's loader, as for its own kernels).
_BINDINGS_HEAD = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <type_traits>

static void* (*nestc_data_ptr)(PyObject* obj);

template <typename T> static inline T nestc_arg(PyObject* args, Py_ssize_t n) {
    static_assert(std::is_pointer_v<T>, "a kernel argument is a pointer, an integer or a float");
    return static_cast<T>(nestc_data_ptr(PyTuple_GET_ITEM(args, n)));
}
template <> inline int64_t nestc_arg<int64_t>(PyObject* args, Py_ssize_t n) {
    auto v = PyLong_AsSsize_t(PyTuple_GET_ITEM(args, n));
    if (v == -1 && PyErr_Occurred()) throw std::runtime_error("expected an int argument");
    return v;
}
template <> inline uintptr_t nestc_arg<uintptr_t>(PyObject* args, Py_ssize_t n) {
    auto v = PyLong_AsVoidPtr(PyTuple_GET_ITEM(args, n));
    if (v == reinterpret_cast<void*>(-1) && PyErr_Occurred()) throw std::runtime_error("expected an int argument");
    return reinterpret_cast<uintptr_t>(v);
}
template <> inline float nestc_arg<float>(PyObject* args, Py_ssize_t n) {
    auto v = PyFloat_AsDouble(PyTuple_GET_ITEM(args, n));
    if (v == -1.0 && PyErr_Occurred()) throw std::runtime_error("expected a float argument");
    return static_cast<float>(v);
}

"""

_BINDINGS_TAIL = r"""
static struct PyModuleDef nestc_module = {PyModuleDef_HEAD_INIT, "kernel", nullptr, -1, nestc_methods};

PyMODINIT_FUNC PyInit_kernel(void) {
    const char* addr = std::getenv("_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR");
    if (!addr) {
        PyErr_SetString(PyExc_RuntimeError, "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR must be set");
        return nullptr;
    }
    char* end = nullptr;
    errno = 0;
    uintptr_t value = std::strtoull(addr, &end, 10);
    if (errno != 0 || end == addr || value == 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot parse _TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR");
        return nullptr;
    }
    nestc_data_ptr = reinterpret_cast<decltype(nestc_data_ptr)>(value);
    PyObject* module = PyModule_Create(&nestc_module);
#ifdef Py_GIL_DISABLED
    if (module) PyUnstable_Module_SetGIL(module, Py_MOD_GIL_NOT_USED);
#endif
    return module;
}
"""


def groups(sizes: list[int], n: int) -> list[range]:
    """Split kernels 0..len(sizes)-1 into at most n runs of consecutive kernels with about equal
    total source size (one per compile worker: the builds run side by side)."""
    n = max(1, min(n, len(sizes)))
    total = sum(sizes)
    out, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        if len(out) < n - 1 and acc >= total * (len(out) + 1) / n and i + 1 < len(sizes):
            out.append(range(start, i + 1))
            start = i + 1
    out.append(range(start, len(sizes)))
    return out


class BatchedKernel:
    """Stands in for one kernel in the wrapper's globals until `AsyncCompile.wait` builds its batch."""

    def __init__(self, batch: "KernelBatch", index: int):
        self.batch, self.index = batch, index

    def result(self, timeout: float | None = None):
        self.batch.build()
        return self.batch.functions[self.index]

    def __call__(self, *args):
        # Inductor's wrappers call kernels only after wait() has swapped the placeholders out;
        # a caller that does not still gets the right kernel, built (with its batch) on first use.
        return self.result()(*args)


class KernelBatch:
    """The kernels one wrapper module asked for, built together at its `wait`."""

    def __init__(self, async_compile, get_compile_threads, bindings):
        self.async_compile = async_compile
        self.get_compile_threads, self.bindings = get_compile_threads, bindings
        self.kernels: list[tuple[list[str], str]] = []
        self.functions: list | None = None

    def add(self, argtypes: list[str], source: str) -> BatchedKernel:
        # reached only when a placeholder ran before wait() and more kernels followed, which
        # inductor's wrappers never do (they ask for every kernel, then wait, then run)
        if self.functions is not None:
            raise RuntimeError("kernel added to a batch that was already built")
        self.kernels.append((argtypes, source))
        return BatchedKernel(self, len(self.kernels) - 1)

    def build(self) -> None:
        if self.functions is not None:
            return
        Bindings = self.bindings
        threads = self.get_compile_threads()
        submit = self.async_compile.submit if threads > 1 else None
        runs = groups([len(s) for _, s in self.kernels], threads)
        started = []
        for run in runs:
            part = [self.kernels[i] for i in run]
            if len(part) == 1:
                argtypes, source = part[0]
                started.append((run, Bindings.load_pybinding_async(argtypes, source, submit_fn=submit), True))
            else:
                started.append((run, Bindings.load_async(combined_source(part), submit_fn=submit), False))
        functions: list = [None] * len(self.kernels)
        for run, get, single in started:
            try:
                loaded = get()
                for j, i in enumerate(run):
                    functions[i] = loaded if single else getattr(loaded, f"kernel_{j}")
            except Exception as error:  # noqa: BLE001 - any failed batch falls back to inductor's path
                if single:
                    raise
                log.warning("nestc: a batch of %d C++ kernels did not build (%s); building them one by one",
                            len(run), str(error).splitlines()[0] if str(error) else type(error).__name__)
                for i in run:
                    functions[i] = Bindings.load_pybinding(*self.kernels[i])
        self.functions = functions
