/* Verify a chunk of Ed25519 signatures with the GIL released for the whole chunk.
 *
 * Why this exists: calling libsodium once per signature from Python makes a
 * verifying thread take the GIL back after every signature, so threads that
 * should verify in parallel queue for the GIL behind the Python that builds
 * the block (benchmarks/README.md, "Validation core"). Here a thread takes the
 * GIL once per chunk. The verification function is libsodium's
 * crypto_sign_verify_detached from pynacl's bundled libsodium; its address is
 * passed in by consensus/sigverify.py, so nothing here links to a library.
 * Pure computation: no I/O, no state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef int (*verify_fn)(const unsigned char *sig, const unsigned char *m,
                         unsigned long long mlen, const unsigned char *pk);

#define PK_BYTES 32
#define SIG_BYTES 64

/* verify_chunk(fn_address, items) -> bytes: items is a sequence of tuples
 * (tag, public_key, message, signature); result byte i is 1 where item i
 * verifies, 0 where it does not (or its key or signature has the wrong size). */
static PyObject *verify_chunk(PyObject *self, PyObject *args) {
    unsigned long long address;
    PyObject *items;
    if (!PyArg_ParseTuple(args, "KO", &address, &items)) return NULL;
    if (address == 0) {
        PyErr_SetString(PyExc_ValueError, "null function address");
        return NULL;
    }
    /* A tuple copy holds a reference to every item while the GIL is released. */
    PyObject *held = PySequence_Tuple(items);
    if (held == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(held);
    const unsigned char **pks = PyMem_Malloc(sizeof(*pks) * (n ? n : 1));
    const unsigned char **msgs = PyMem_Malloc(sizeof(*msgs) * (n ? n : 1));
    const unsigned char **sigs = PyMem_Malloc(sizeof(*sigs) * (n ? n : 1));
    unsigned long long *lens = PyMem_Malloc(sizeof(*lens) * (n ? n : 1));
    PyObject *result = PyBytes_FromStringAndSize(NULL, n);
    if (!pks || !msgs || !sigs || !lens || !result) {
        PyErr_NoMemory();
        goto fail;
    }
    char *out = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(held, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
            PyErr_SetString(PyExc_TypeError, "items must be (tag, pk, msg, sig) tuples");
            goto fail;
        }
        PyObject *pk = PyTuple_GET_ITEM(item, 1), *msg = PyTuple_GET_ITEM(item, 2),
                 *sig = PyTuple_GET_ITEM(item, 3);
        if (!PyBytes_Check(pk) || !PyBytes_Check(msg) || !PyBytes_Check(sig)) {
            PyErr_SetString(PyExc_TypeError, "public key, message and signature must be bytes");
            goto fail;
        }
        out[i] = PyBytes_GET_SIZE(pk) == PK_BYTES && PyBytes_GET_SIZE(sig) == SIG_BYTES;
        pks[i] = (const unsigned char *)PyBytes_AS_STRING(pk);
        msgs[i] = (const unsigned char *)PyBytes_AS_STRING(msg);
        sigs[i] = (const unsigned char *)PyBytes_AS_STRING(sig);
        lens[i] = (unsigned long long)PyBytes_GET_SIZE(msg);
    }
    verify_fn fn = (verify_fn)(uintptr_t)address;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (out[i]) out[i] = fn(sigs[i], msgs[i], lens[i], pks[i]) == 0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(pks);
    PyMem_Free(msgs);
    PyMem_Free(sigs);
    PyMem_Free(lens);
    Py_DECREF(held);
    return result;
fail:
    PyMem_Free(pks);
    PyMem_Free(msgs);
    PyMem_Free(sigs);
    PyMem_Free(lens);
    Py_XDECREF(result);
    Py_DECREF(held);
    return NULL;
}

static PyMethodDef methods[] = {
    {"verify_chunk", verify_chunk, METH_VARARGS,
     "verify_chunk(fn_address, items) -> bytes of 1 (valid) or 0 per (tag, pk, msg, sig)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchverify", NULL, -1, methods};

PyMODINIT_FUNC PyInit__batchverify(void) { return PyModule_Create(&module); }
