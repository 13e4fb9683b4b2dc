/* Verify a chunk of SM2 signatures (GB/T 32918.2, with SM3) with the GIL released.
 *
 * Why this exists: from Python, every signature would take the GIL back, so
 * threads that should verify in parallel would queue for it behind the
 * Python that builds the block (as consensus/_batchverify.c explains for
 * Ed25519); here a thread takes the GIL once per chunk. And OpenSSL 3.0's
 * EVP layer adds work around the curve arithmetic: building an EVP_PKEY
 * through the provider's key import, fetching the signature and digest
 * implementations (under the library's locks), DER-encoding the signature
 * (measured with callgrind: 4.86 million instructions per verification
 * through EVP and ctypes, 4.30 million here, of which [s]G + [t]P is 3.86
 * and decoding the compressed key 0.24). So each signature costs the
 * standard's verification steps B1-B7 on libcrypto's own primitives: the
 * point decoding, the double scalar multiplication and the SM3 digest are
 * OpenSSL's; only the glue between them (range checks, t = r + s,
 * R = e + x1) is written here, and tests/unit/consensus/test_sm2.py checks
 * it against OpenSSL's EVP verification, the gmssl package and the
 * standard's published example.
 *
 * Nothing links to libcrypto at build time (its headers and its unversioned
 * .so may be missing on a fresh machine): consensus/sm2.py looks up the
 * symbols named in SYMBOLS in the libcrypto.so.3 that Python's own _hashlib
 * loaded and passes their addresses to init(), once. The few prototypes are
 * declared below, as OpenSSL 3 declares them. Pure computation: no I/O; the
 * only state is the function table, the SM2 group and the SM3 digest method,
 * set by init() and only read after it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct bignum_st BIGNUM;
typedef struct bignum_ctx BN_CTX;
typedef struct ec_group_st EC_GROUP;
typedef struct ec_point_st EC_POINT;
typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;

#define NID_SM2 1172                /* obj_mac.h: NID_sm2 */
#define POINT_CONVERSION_UNCOMPRESSED 4

#define PK_BYTES 33                 /* SEC1 compressed: 0x02/0x03 || X */
#define SIG_BYTES 64                /* r || s, 32 bytes each, big-endian */
#define FIELD_BYTES 32

/* The libcrypto functions used, in the order of SYMBOLS. */
static struct {
    BN_CTX *(*BN_CTX_new)(void);
    void (*BN_CTX_free)(BN_CTX *);
    void (*BN_CTX_start)(BN_CTX *);
    BIGNUM *(*BN_CTX_get)(BN_CTX *);
    void (*BN_CTX_end)(BN_CTX *);
    BIGNUM *(*BN_bin2bn)(const unsigned char *, int, BIGNUM *);
    int (*BN_cmp)(const BIGNUM *, const BIGNUM *);
    int (*BN_is_zero)(const BIGNUM *);
    int (*BN_mod_add)(BIGNUM *, const BIGNUM *, const BIGNUM *, const BIGNUM *, BN_CTX *);
    EC_GROUP *(*EC_GROUP_new_by_curve_name)(int);
    void (*EC_GROUP_free)(EC_GROUP *);
    const BIGNUM *(*EC_GROUP_get0_order)(const EC_GROUP *);
    EC_POINT *(*EC_POINT_new)(const EC_GROUP *);
    void (*EC_POINT_free)(EC_POINT *);
    int (*EC_POINT_oct2point)(const EC_GROUP *, EC_POINT *, const unsigned char *, size_t,
                              BN_CTX *);
    size_t (*EC_POINT_point2oct)(const EC_GROUP *, const EC_POINT *, int, unsigned char *,
                                 size_t, BN_CTX *);
    int (*EC_POINT_mul)(const EC_GROUP *, EC_POINT *, const BIGNUM *, const EC_POINT *,
                        const BIGNUM *, BN_CTX *);
    int (*EC_POINT_get_affine_coordinates)(const EC_GROUP *, const EC_POINT *, BIGNUM *,
                                           BIGNUM *, BN_CTX *);
    EVP_MD *(*EVP_MD_fetch)(void *, const char *, const char *);
    void (*EVP_MD_free)(EVP_MD *);
    EVP_MD_CTX *(*EVP_MD_CTX_new)(void);
    void (*EVP_MD_CTX_free)(EVP_MD_CTX *);
    int (*EVP_DigestInit_ex2)(EVP_MD_CTX *, const EVP_MD *, const void *);
    int (*EVP_DigestUpdate)(EVP_MD_CTX *, const void *, size_t);
    int (*EVP_DigestFinal_ex)(EVP_MD_CTX *, unsigned char *, unsigned int *);
    int (*EVP_Digest)(const void *, size_t, unsigned char *, unsigned int *, const EVP_MD *,
                      void *);
    void (*ERR_clear_error)(void);
} C;

static const char *const SYMBOLS[] = {
    "BN_CTX_new", "BN_CTX_free", "BN_CTX_start", "BN_CTX_get", "BN_CTX_end",
    "BN_bin2bn", "BN_cmp", "BN_is_zero", "BN_mod_add",
    "EC_GROUP_new_by_curve_name", "EC_GROUP_free", "EC_GROUP_get0_order",
    "EC_POINT_new", "EC_POINT_free", "EC_POINT_oct2point", "EC_POINT_point2oct",
    "EC_POINT_mul", "EC_POINT_get_affine_coordinates",
    "EVP_MD_fetch", "EVP_MD_free", "EVP_MD_CTX_new", "EVP_MD_CTX_free",
    "EVP_DigestInit_ex2", "EVP_DigestUpdate", "EVP_DigestFinal_ex", "EVP_Digest",
    "ERR_clear_error",
};
#define N_SYMBOLS (sizeof(SYMBOLS) / sizeof(SYMBOLS[0]))
/* init() fills the table as an array of pointers: one slot per name, no padding. */
_Static_assert(sizeof(C) == N_SYMBOLS * sizeof(void *), "SYMBOLS and the table disagree");

/* Read-only once init() has set them; EC_POINT_mul and the digest take them as const. */
static EC_GROUP *group;
static EVP_MD *sm3;

/* ENTL || ID || a || b || xG || yG of Z_A (GB/T 32918.2, 5.5) for the default
 * distinguishing identifier "1234567812345678" (ENTL = 128 bits) and the
 * recommended curve of GB/T 32918.5; xA || yA follow, per key. */
static const unsigned char Z_PREFIX[2 + 16 + 4 * FIELD_BYTES] = {
    0x00, 0x80,
    '1', '2', '3', '4', '5', '6', '7', '8', '1', '2', '3', '4', '5', '6', '7', '8',
    /* a */
    0xFF, 0xFF, 0xFF, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFC,
    /* b */
    0x28, 0xE9, 0xFA, 0x9E, 0x9D, 0x9F, 0x5E, 0x34, 0x4D, 0x5A, 0x9E, 0x4B, 0xCF, 0x65, 0x09, 0xA7,
    0xF3, 0x97, 0x89, 0xF5, 0x15, 0xAB, 0x8F, 0x92, 0xDD, 0xBC, 0xBD, 0x41, 0x4D, 0x94, 0x0E, 0x93,
    /* xG */
    0x32, 0xC4, 0xAE, 0x2C, 0x1F, 0x19, 0x81, 0x19, 0x5F, 0x99, 0x04, 0x46, 0x6A, 0x39, 0xC9, 0x94,
    0x8F, 0xE3, 0x0B, 0xBF, 0xF2, 0x66, 0x0B, 0xE1, 0x71, 0x5A, 0x45, 0x89, 0x33, 0x4C, 0x74, 0xC7,
    /* yG */
    0xBC, 0x37, 0x36, 0xA2, 0xF4, 0xF6, 0x77, 0x9C, 0x59, 0xBD, 0xCE, 0xE3, 0x6B, 0x69, 0x21, 0x53,
    0xD0, 0xA9, 0x87, 0x7C, 0xC6, 0x2A, 0x47, 0x40, 0x02, 0xDF, 0x32, 0xE5, 0x21, 0x39, 0xF0, 0xA0,
};

/* Scratch objects for one call: made once per chunk, not per signature. */
typedef struct {
    BN_CTX *bn;
    EC_POINT *pk;
    EC_POINT *sum;
    EVP_MD_CTX *md;
} scratch;

static void scratch_free(scratch *w) {
    if (w->md) C.EVP_MD_CTX_free(w->md);
    if (w->sum) C.EC_POINT_free(w->sum);
    if (w->pk) C.EC_POINT_free(w->pk);
    if (w->bn) C.BN_CTX_free(w->bn);
}

static int scratch_new(scratch *w) {
    w->bn = C.BN_CTX_new();
    w->pk = C.EC_POINT_new(group);
    w->sum = C.EC_POINT_new(group);
    w->md = C.EVP_MD_CTX_new();
    if (w->bn && w->pk && w->sum && w->md) return 1;
    scratch_free(w);
    return 0;
}

/* SM3 over a || b into out (32 bytes). */
static int sm3_two(EVP_MD_CTX *md, const unsigned char *a, size_t alen, const unsigned char *b,
                   size_t blen, unsigned char *out) {
    unsigned int outlen = 0;
    return C.EVP_DigestInit_ex2(md, sm3, NULL) == 1 && C.EVP_DigestUpdate(md, a, alen) == 1 &&
           C.EVP_DigestUpdate(md, b, blen) == 1 && C.EVP_DigestFinal_ex(md, out, &outlen) == 1 &&
           outlen == FIELD_BYTES;
}

/* 1 if sig is a valid SM2 signature of msg under the compressed key pk, else 0.
 * The caller has checked the sizes. Steps B1-B7 of GB/T 32918.2, 7.1. */
static int verify_one(scratch *w, const unsigned char *pk, const unsigned char *msg, size_t mlen,
                      const unsigned char *sig) {
    if (pk[0] != 0x02 && pk[0] != 0x03) return 0;  /* only the compressed encoding */
    int ok = 0;
    unsigned char z_in[sizeof(Z_PREFIX) + 2 * FIELD_BYTES];
    unsigned char point[1 + 2 * FIELD_BYTES];
    unsigned char z[FIELD_BYTES], e_bytes[FIELD_BYTES];
    C.BN_CTX_start(w->bn);
    BIGNUM *r = C.BN_CTX_get(w->bn), *s = C.BN_CTX_get(w->bn), *t = C.BN_CTX_get(w->bn);
    BIGNUM *e = C.BN_CTX_get(w->bn), *x1 = C.BN_CTX_get(w->bn);
    if (x1 == NULL) goto done;  /* BN_CTX_get fails for all later ones once one fails */
    const BIGNUM *n = C.EC_GROUP_get0_order(group);
    /* B1, B2: r and s in [1, n-1]. */
    if (!C.BN_bin2bn(sig, FIELD_BYTES, r) || !C.BN_bin2bn(sig + FIELD_BYTES, FIELD_BYTES, s))
        goto done;
    if (C.BN_is_zero(r) || C.BN_is_zero(s) || C.BN_cmp(r, n) >= 0 || C.BN_cmp(s, n) >= 0)
        goto done;
    /* The key: a point on the curve (oct2point rejects X >= p and X with no square root;
     * the cofactor is 1, so every such point is in the group). */
    if (C.EC_POINT_oct2point(group, w->pk, pk, PK_BYTES, w->bn) != 1) goto done;
    if (C.EC_POINT_point2oct(group, w->pk, POINT_CONVERSION_UNCOMPRESSED, point, sizeof(point),
                             w->bn) != sizeof(point))
        goto done;
    /* B3, B4: e = SM3(Z_A || M), Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA). */
    memcpy(z_in, Z_PREFIX, sizeof(Z_PREFIX));
    memcpy(z_in + sizeof(Z_PREFIX), point + 1, 2 * FIELD_BYTES);
    if (!sm3_two(w->md, z_in, sizeof(z_in), NULL, 0, z)) goto done;
    if (!sm3_two(w->md, z, sizeof(z), msg, mlen, e_bytes)) goto done;
    if (!C.BN_bin2bn(e_bytes, FIELD_BYTES, e)) goto done;
    /* B5: t = (r + s) mod n, not 0. */
    if (C.BN_mod_add(t, r, s, n, w->bn) != 1 || C.BN_is_zero(t)) goto done;
    /* B6: (x1, y1) = [s]G + [t]P_A; the point at infinity has no affine coordinates. */
    if (C.EC_POINT_mul(group, w->sum, s, w->pk, t, w->bn) != 1) goto done;
    if (C.EC_POINT_get_affine_coordinates(group, w->sum, x1, NULL, w->bn) != 1) goto done;
    /* B7: R = (e + x1) mod n; valid iff R = r. */
    if (C.BN_mod_add(t, e, x1, n, w->bn) != 1) goto done;
    ok = C.BN_cmp(t, r) == 0;
done:
    C.BN_CTX_end(w->bn);
    if (!ok) C.ERR_clear_error();  /* this thread's error queue: nothing is read from it */
    return ok;
}

static PyObject *init(PyObject *self, PyObject *args) {
    PyObject *addresses;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &addresses)) return NULL;
    if (group != NULL) Py_RETURN_NONE;  /* the module keeps the first table it was given */
    if (PyTuple_GET_SIZE(addresses) != (Py_ssize_t)N_SYMBOLS) {
        PyErr_SetString(PyExc_ValueError, "one address per name in SYMBOLS");
        return NULL;
    }
    void **slots = (void **)&C;
    for (size_t i = 0; i < N_SYMBOLS; i++) {
        unsigned long long a = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(addresses, i));
        if (PyErr_Occurred()) return NULL;
        if (a == 0) {
            PyErr_Format(PyExc_ValueError, "null address for %s", SYMBOLS[i]);
            return NULL;
        }
        slots[i] = (void *)(uintptr_t)a;
    }
    EC_GROUP *g = C.EC_GROUP_new_by_curve_name(NID_SM2);
    EVP_MD *md = C.EVP_MD_fetch(NULL, "SM3", NULL);
    if (g == NULL || md == NULL) {
        if (g) C.EC_GROUP_free(g);
        if (md) C.EVP_MD_free(md);
        C.ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "this libcrypto has no SM2 curve or no SM3");
        return NULL;
    }
    group = g;
    sm3 = md;
    Py_RETURN_NONE;
}

/* verify_chunk(items) -> bytes: items is a sequence of (public_key, message, signature)
 * or (tag, public_key, message, signature) tuples of bytes; result byte i is 1 where
 * item i verifies, 0 where it does not (wrong sizes included). */
static PyObject *verify_chunk(PyObject *self, PyObject *items) {
    if (group == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "init() was not called");
        return NULL;
    }
    /* A tuple copy holds a reference to every item while the GIL is released. */
    PyObject *held = PySequence_Tuple(items);
    if (held == NULL) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(held);
    const unsigned char **pks = PyMem_Malloc(sizeof(*pks) * (n ? n : 1));
    const unsigned char **msgs = PyMem_Malloc(sizeof(*msgs) * (n ? n : 1));
    const unsigned char **sigs = PyMem_Malloc(sizeof(*sigs) * (n ? n : 1));
    size_t *lens = PyMem_Malloc(sizeof(*lens) * (n ? n : 1));
    PyObject *result = PyBytes_FromStringAndSize(NULL, n);
    scratch w = {0};
    if (!pks || !msgs || !sigs || !lens || !result) {
        PyErr_NoMemory();
        goto fail;
    }
    char *out = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(held, i);
        Py_ssize_t size = PyTuple_Check(item) ? PyTuple_GET_SIZE(item) : 0;
        if (size != 3 && size != 4) {
            PyErr_SetString(PyExc_TypeError, "items must be (pk, msg, sig) or (tag, pk, msg, sig)");
            goto fail;
        }
        Py_ssize_t first = size - 3;
        PyObject *pk = PyTuple_GET_ITEM(item, first), *msg = PyTuple_GET_ITEM(item, first + 1),
                 *sig = PyTuple_GET_ITEM(item, first + 2);
        if (!PyBytes_Check(pk) || !PyBytes_Check(msg) || !PyBytes_Check(sig)) {
            PyErr_SetString(PyExc_TypeError, "public key, message and signature must be bytes");
            goto fail;
        }
        out[i] = PyBytes_GET_SIZE(pk) == PK_BYTES && PyBytes_GET_SIZE(sig) == SIG_BYTES;
        pks[i] = (const unsigned char *)PyBytes_AS_STRING(pk);
        msgs[i] = (const unsigned char *)PyBytes_AS_STRING(msg);
        sigs[i] = (const unsigned char *)PyBytes_AS_STRING(sig);
        lens[i] = (size_t)PyBytes_GET_SIZE(msg);
    }
    int made;
    Py_BEGIN_ALLOW_THREADS
    made = scratch_new(&w);
    if (made) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (out[i]) out[i] = (char)verify_one(&w, pks[i], msgs[i], lens[i], sigs[i]);
        }
        scratch_free(&w);
    }
    Py_END_ALLOW_THREADS
    if (!made) {
        PyErr_NoMemory();
        goto fail;
    }
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

/* Inputs from this size on are hashed with the GIL released (hashlib's own threshold). */
#define SM3_GIL_FREE_BYTES 2048

/* sm3(data) -> bytes: the SM3 digest through the digest method fetched once by init(),
 * so a call costs no method lookup (hashlib.new("sm3") looks the name up each time). */
static PyObject *sm3_digest(PyObject *self, PyObject *data) {
    if (group == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "init() was not called");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char out[FIELD_BYTES];
    unsigned int outlen = 0;
    int ok;
    if (view.len >= SM3_GIL_FREE_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        ok = C.EVP_Digest(view.buf, (size_t)view.len, out, &outlen, sm3, NULL);
        Py_END_ALLOW_THREADS
    } else {
        ok = C.EVP_Digest(view.buf, (size_t)view.len, out, &outlen, sm3, NULL);
    }
    PyBuffer_Release(&view);
    if (ok != 1 || outlen != FIELD_BYTES) {
        C.ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "SM3 failed");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out, FIELD_BYTES);
}

static PyMethodDef methods[] = {
    {"sm3", sm3_digest, METH_O, "sm3(data) -> the 32-byte SM3 digest"},
    {"init", init, METH_VARARGS,
     "init(addresses) -> None: the libcrypto functions named in SYMBOLS, in that order"},
    {"verify_chunk", verify_chunk, METH_O,
     "verify_chunk(items) -> bytes of 1 (valid) or 0 per (pk, msg, sig) or (tag, pk, msg, sig)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sm2", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sm2(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *names = PyTuple_New(N_SYMBOLS);
    if (names == NULL) goto fail;
    for (size_t i = 0; i < N_SYMBOLS; i++) {
        PyObject *name = PyUnicode_FromString(SYMBOLS[i]);
        if (name == NULL) {
            Py_DECREF(names);
            goto fail;
        }
        PyTuple_SET_ITEM(names, i, name);
    }
    if (PyModule_AddObject(m, "SYMBOLS", names) < 0) {
        Py_DECREF(names);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
