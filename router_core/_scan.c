/* eventrouter._scan: one pass over a JSON request body, for the edge (router_core/scan.py).
 *
 * An optional compiled module: router_core/scan.py holds the pure-Python code that runs
 * when it is missing (or when EVENTROUTER_PURE_PYTHON=1), and the two agree on every input
 * (tests/unit/test_scan.py). One pass answers two questions the edge asks of every body:
 *
 * - is it certainly within the structure limits (nesting depth, keys per object)? Strings
 *   are skipped (escapes honoured); every bracket is matched to its kind; each object's
 *   colons are counted. Only a well-formed shape within the limits answers yes: anything
 *   else (past a limit, unbalanced, a colon outside an object, a backslash outside a
 *   string) answers "not certain", and the caller runs the exact pure-Python check
 *   (router_core/edge/limits.py), which then decides, with its own error. So a yes here is
 *   a yes there, and every refusal is still made, and worded, by the Python code.
 *
 * - may it hold a number no float holds? Exactly eventrouter.scan.may_overflow_py: the
 *   bytes (strings included) are classed as number characters (digits + - .), delimiters
 *   (: , [ and whitespace), e/E and others; the answer is yes when an e/E follows a run of
 *   number characters that starts at the beginning or after a delimiter, and is followed by
 *   three number characters, or when a run of number characters is 200 long.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { NUMBER = 1, DELIMITER = 2, EXPONENT = 4, SHAPE = 8 };

/* A run of number characters this long may be a number no float holds (scan.py). */
#define LONG_DIGITS 200
/* Depths up to this use the C stack for the open containers; deeper limits allocate. */
#define STACK_DEPTH 128

static unsigned char classes[256];

static void
init_classes(void)
{
    const char *p;
    for (p = "0123456789+-."; *p; p++) classes[(unsigned char)*p] |= NUMBER;
    for (p = ":,[ \t\n\r"; *p; p++) classes[(unsigned char)*p] |= DELIMITER;
    classes['e'] |= EXPONENT;
    classes['E'] |= EXPONENT;
    for (p = "\"{}[]:\\"; *p; p++) classes[(unsigned char)*p] |= SHAPE;
}

typedef struct {
    int within;   /* certainly within the limits (only when the shape was checked) */
    int overflow; /* may hold a number no float holds */
} result;

/* Whether the run of number characters ``p[start..end]`` (a whole run: ``p[start - 1]``,
 * if any, is no number character) may be a number no float holds (scan.py's rules): 200
 * characters long, or followed by an e/E and three number characters (``1e400``) when it
 * starts at the beginning or right after a delimiter. */
static int
big_number(const unsigned char *p, Py_ssize_t n, Py_ssize_t start, Py_ssize_t end)
{
    if (end + 1 - start >= LONG_DIGITS) return 1;
    return end + 4 < n && (classes[p[end + 1]] & EXPONENT) &&
           (classes[p[end + 2]] & classes[p[end + 3]] & classes[p[end + 4]] & NUMBER) &&
           (start == 0 || (classes[p[start - 1]] & DELIMITER));
}

/* The pass. ``max_depth`` < 0 skips the shape (the overflow question alone).
 *
 * The common byte (a letter, a space, an e) costs a class lookup and one test, in a loop
 * of its own; a run of number characters is consumed whole, and the overflow question
 * asked at its end; only a byte of the shape (" { } [ ] : \) takes the slow branch. */
static int
scan(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_depth, Py_ssize_t max_keys,
     result *out)
{
    unsigned char kinds_local[STACK_DEPTH];
    Py_ssize_t keys_local[STACK_DEPTH];
    unsigned char *kinds = kinds_local;
    Py_ssize_t *keys = keys_local;
    int shape = max_depth >= 0 && max_keys >= 0; /* still tracking the shape */
    int overflow = 0, in_string = 0;
    /* The classes that leave the fast path: fewer as the questions are answered. */
    unsigned char slow = NUMBER | (shape ? SHAPE : 0);
    Py_ssize_t depth = 0, i;

    /* No body opens more containers than it has bytes: a huge limit allocates no more. */
    Py_ssize_t slots = max_depth < n ? max_depth : n;

    if (shape && slots > STACK_DEPTH) {
        kinds = PyMem_Malloc((size_t)slots);
        keys = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)slots);
        if (kinds == NULL || keys == NULL) {
            PyMem_Free(kinds == kinds_local ? NULL : kinds);
            PyMem_Free(keys == keys_local ? NULL : keys);
            PyErr_NoMemory();
            return -1;
        }
    }
    for (i = 0; i < n; i++) {
        unsigned char c, k;
        while (i < n && !(classes[p[i]] & slow)) i++; /* the fast path, in its own loop */
        if (i == n) break;
        c = p[i];
        k = classes[c];
        if (k & NUMBER) {
            /* A run of number characters, consumed whole (it holds no byte of the shape
             * and no e/E): the overflow question is asked at its end. */
            Py_ssize_t start = i;
            while (i + 1 < n && (classes[p[i + 1]] & NUMBER)) i++;
            if (big_number(p, n, start, i)) {
                overflow = 1;
                slow &= (unsigned char)~NUMBER;
                if (!shape) break; /* both questions answered */
            }
            continue;
        }
        if (in_string) {
            if (c == '"') {
                in_string = 0;
            } else if (c == '\\' && i + 1 < n && (p[i + 1] == '"' || p[i + 1] == '\\')) {
                i++; /* an escaped quote or backslash (neither counts for a number) */
            }
            continue;
        }
        switch (c) {
        case '"':
            in_string = 1;
            continue;
        case '{':
        case '[':
            if (depth >= max_depth) {
                shape = 0; /* past the depth limit: the exact check decides */
                break;
            }
            kinds[depth] = c;
            keys[depth] = 0;
            depth++;
            continue;
        case '}':
        case ']':
            if (depth == 0 || kinds[depth - 1] != (c == '}' ? '{' : '[')) shape = 0;
            else depth--;
            break;
        case ':':
            if (depth == 0 || kinds[depth - 1] != '{' || ++keys[depth - 1] > max_keys) shape = 0;
            break;
        default: /* a backslash outside a string */
            shape = 0;
        }
        if (!shape) {
            slow &= (unsigned char)~SHAPE;
            if (overflow) break; /* both questions answered */
        }
    }
    out->within = shape && !in_string && depth == 0;
    out->overflow = overflow;
    if (kinds != kinds_local) {
        PyMem_Free(kinds);
        PyMem_Free(keys);
    }
    return 0;
}

PyDoc_STRVAR(scan_body_doc,
"scan_body(data, max_depth, max_keys, /) -> (within, may_overflow)\n\n"
"One pass over ``data`` (a bytes-like object): whether it is certainly within the\n"
"structure limits (False: not certain, run the exact check), and whether it may hold\n"
"a number no float holds (eventrouter.scan.may_overflow_py's answer).");

static PyObject *
scan_body(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t max_depth, max_keys;
    result out;
    int failed;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan_body() takes 3 arguments");
        return NULL;
    }
    max_depth = PyLong_AsSsize_t(args[1]);
    if (max_depth == -1 && PyErr_Occurred()) return NULL;
    max_keys = PyLong_AsSsize_t(args[2]);
    if (max_keys == -1 && PyErr_Occurred()) return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    /* A negative limit refuses everything in the exact check (limits.py): never certain. */
    failed = scan(view.buf, view.len, max_depth < 0 || max_keys < 0 ? -1 : max_depth,
                  max_keys, &out);
    PyBuffer_Release(&view);
    if (failed) return NULL;
    return Py_BuildValue("(OO)", out.within ? Py_True : Py_False,
                         out.overflow ? Py_True : Py_False);
}

PyDoc_STRVAR(may_overflow_doc,
"may_overflow(data, /) -> bool\n\n"
"Whether ``data`` (a bytes-like object) may hold a number no float holds: exactly\n"
"eventrouter.scan.may_overflow_py's answer.");

static PyObject *
may_overflow(PyObject *module, PyObject *data)
{
    Py_buffer view;
    result out;
    int failed;

    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    failed = scan(view.buf, view.len, -1, -1, &out);
    PyBuffer_Release(&view);
    if (failed) return NULL;
    return PyBool_FromLong(out.overflow);
}

static PyMethodDef methods[] = {
    {"scan_body", (PyCFunction)(void (*)(void))scan_body, METH_FASTCALL, scan_body_doc},
    {"may_overflow", may_overflow, METH_O, may_overflow_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "eventrouter._scan",
    .m_doc = "One pass over a JSON request body: the structure limits and out-of-range "
             "numbers (router_core/_scan.c; eventrouter.scan is the interface).",
    .m_size = 0,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    init_classes();
    return PyModule_Create(&module);
}
