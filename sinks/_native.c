/* eventrouter.sinks._native: whole columns of ClickHouse's Native format, for the
 * clickhouse sink (sinks/clickhouse.py, "the Native format").
 *
 * An optional compiled module: sinks/clickhouse.py holds the pure-Python code that runs
 * when it is missing (or when EVENTROUTER_PURE_PYTHON=1), and the two give the same bytes
 * for every input (tests/unit/test_clickhouse_native.py). Each function does, in one C
 * loop over a batch's column, what the Python code does with a few C-level passes and a
 * Python-level conversion per value:
 *
 * - string_column(values): a String column: each value's length as a LEB128 varint, then
 *   its bytes. A value is a str (written as UTF-8, strictly: a lone surrogate raises
 *   UnicodeEncodeError, as str.encode() does) or any object with the buffer protocol
 *   (bytes, msgspec.Raw: the raw JSON text as it came). Anything else: TypeError.
 *
 * - time_column(values, milliseconds, nullable): a DateTime64(3) (Int64 milliseconds) or
 *   DateTime (UInt32 seconds) column, little-endian, of datetimes in UTC (the
 *   datetime.timezone.utc singleton), preceded by the null map (one byte per row, 1 for
 *   None) when nullable. The value is floor((t - 1970-01-01) / unit), exactly Python's
 *   timedelta floor division. None when a value is anything else (another tzinfo, a naive
 *   or subclassed datetime, a None where no null is allowed, a DateTime second outside
 *   UInt32): the caller then runs the Python code, which converts it or raises as before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <string.h>

/* Bytes of a LEB128 varint of n. */
static inline Py_ssize_t
varint_size(size_t n)
{
    Py_ssize_t size = 1;
    while (n >= 0x80) {
        n >>= 7;
        size++;
    }
    return size;
}

static inline char *
write_varint(char *out, size_t n)
{
    while (n >= 0x80) {
        *out++ = (char)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *out++ = (char)n;
    return out;
}

/* The bytes of one value of a String column, in view: a str's UTF-8 (which lives in the
 * str), a bytes object's contents, or any other object's buffer (view->obj set: released
 * by the caller). */
static int
value_view(PyObject *value, Py_buffer *view)
{
    view->obj = NULL;
    if (PyBytes_CheckExact(value)) {
        view->buf = PyBytes_AS_STRING(value);
        view->len = PyBytes_GET_SIZE(value);
        return 0;
    }
    if (PyUnicode_Check(value)) {
        view->buf = (void *)PyUnicode_AsUTF8AndSize(value, &view->len);
        return view->buf == NULL ? -1 : 0;
    }
    if (PyObject_CheckBuffer(value)) return PyObject_GetBuffer(value, view, PyBUF_SIMPLE);
    PyErr_Format(PyExc_TypeError, "a String value must be str or bytes-like, not %.100s",
                 Py_TYPE(value)->tp_name);
    return -1;
}

static void
release_views(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (views[i].obj) PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
}

static PyObject *
string_column(PyObject *module, PyObject *arg)
{
    PyObject *values = PySequence_Fast(arg, "string_column() takes a sequence");
    if (values == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values), held = 0, total = 0;
    PyObject **items = PySequence_Fast_ITEMS(values);
    PyObject *column = NULL;
    /* Every value's view is held until its bytes are copied: one look-up each. */
    Py_buffer *views = PyMem_New(Py_buffer, n ? n : 1);
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < n; held++) {
        if (value_view(items[held], &views[held]) < 0) goto done;
        total += varint_size((size_t)views[held].len) + views[held].len;
    }
    column = PyBytes_FromStringAndSize(NULL, total);
    if (column == NULL) goto done;
    char *out = PyBytes_AS_STRING(column);
    for (Py_ssize_t i = 0; i < n; i++) {
        out = write_varint(out, (size_t)views[i].len);
        memcpy(out, views[i].buf, (size_t)views[i].len);
        out += views[i].len;
    }
done:
    if (views) release_views(views, held);
    Py_DECREF(values);
    return column;
}

/* Days from 1970-01-01 to the proleptic Gregorian date y-m-d (negative before). */
static inline int64_t
days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static inline int64_t
floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static PyObject *
time_column(PyObject *module, PyObject *args)
{
    PyObject *arg;
    int milliseconds, nullable;
    if (!PyArg_ParseTuple(args, "Opp:time_column", &arg, &milliseconds, &nullable)) return NULL;
    PyObject *values = PySequence_Fast(arg, "time_column() takes a sequence");
    if (values == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
    PyObject **items = PySequence_Fast_ITEMS(values);
    Py_ssize_t width = milliseconds ? 8 : 4, nulls = nullable ? n : 0;
    PyObject *column = PyBytes_FromStringAndSize(NULL, nulls + n * width);
    if (column == NULL) {
        Py_DECREF(values);
        return NULL;
    }
    unsigned char *null_map = (unsigned char *)PyBytes_AS_STRING(column);
    unsigned char *out = null_map + nulls;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = items[i];
        int64_t number = 0;
        if (v == Py_None && nullable) {
            null_map[i] = 1;
        } else if (PyDateTime_CheckExact(v) &&
                   PyDateTime_DATE_GET_TZINFO(v) == PyDateTime_TimeZone_UTC) {
            if (nullable) null_map[i] = 0;
            int64_t days = days_from_civil(PyDateTime_GET_YEAR(v), PyDateTime_GET_MONTH(v),
                                           PyDateTime_GET_DAY(v));
            int64_t seconds = days * 86400 + PyDateTime_DATE_GET_HOUR(v) * 3600 +
                              PyDateTime_DATE_GET_MINUTE(v) * 60 + PyDateTime_DATE_GET_SECOND(v);
            int64_t micro = seconds * 1000000 + PyDateTime_DATE_GET_MICROSECOND(v);
            if (milliseconds) {
                number = floor_div(micro, 1000);
            } else {
                number = floor_div(micro, 1000000);
                if (number < 0 || number > 0xFFFFFFFFLL) goto python;
            }
        } else {
            goto python;
        }
        uint64_t bits = (uint64_t)number;
        for (Py_ssize_t b = 0; b < width; b++) {
            *out++ = (unsigned char)(bits & 0xFF);
            bits >>= 8;
        }
    }
    Py_DECREF(values);
    return column;
python:
    Py_DECREF(column);
    Py_DECREF(values);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"string_column", string_column, METH_O,
     "string_column(values) -> bytes: a Native String column (varint length, bytes)."},
    {"time_column", time_column, METH_VARARGS,
     "time_column(values, milliseconds, nullable) -> bytes | None: a Native DateTime64(3) "
     "or DateTime column of UTC datetimes (None: not every value is one; use Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "eventrouter.sinks._native",
    "Whole columns of ClickHouse's Native format (sinks/_native.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    return PyModule_Create(&module);
}
