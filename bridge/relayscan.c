/* _sysadm_relayscan: the bridge's per-frame relay step in C (see bridge/relayscan.py,
 * whose scan_one is the reference and the fallback; tests/test_relayscan.py checks that
 * both give the same answer for every input).
 *
 * scan_one(data, pos, end_of_data, limit, prefix) looks at the WebSocket frame that starts
 * at data[pos]. When it is a whole, masked, final text frame of 1..2047 payload bytes (and
 * at most `limit`), whose unmasked payload is ASCII, does not start with '{' and has a
 * non-empty first line "<dest>\n...", it returns (dest, frame, next_pos): the destination
 * as str, the unmasked frame to send on (text header, then `prefix`, then the payload from
 * its first newline on) and the position after the frame. Anything else returns None and
 * the caller's general path takes the frame.
 *
 * Bounds: nothing is read outside data[pos:end_of_data] (checked against the buffer's own
 * length too), and the payload is under 2048 bytes, unmasked on the stack.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <stdint.h>

#define MAX_PAYLOAD 2048

static PyObject *
scan_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, n, limit, length, start, end, newline, id_len, rest, size, hlen;
    const unsigned char *data;
    unsigned char payload[MAX_PAYLOAD];
    unsigned char mask[4];
    unsigned char acc = 0;
    const unsigned char *nl;
    PyObject *prefix, *dest, *frame, *result, *next;
    char *out;

    (void)self;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "scan_one() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    prefix = args[4];
    if (!PyBytes_Check(prefix)) {
        PyErr_SetString(PyExc_TypeError, "scan_one(): prefix must be bytes");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    limit = PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    data = (const unsigned char *)view.buf;
    if (n > view.len)
        n = view.len;
    if (pos < 0 || n - pos < 2 || data[pos] != 0x81)
        goto none;
    length = data[pos + 1] ^ 0x80;  /* the mask bit must be set */
    if (length < 126) {
        start = pos + 6;
    } else if (length == 126 && n - pos >= 4) {
        length = ((Py_ssize_t)data[pos + 2] << 8) | data[pos + 3];
        start = pos + 8;
    } else {
        goto none;
    }
    end = start + length;
    if (end > n || length <= 0 || length >= MAX_PAYLOAD || length > limit)
        goto none;
    memcpy(mask, data + start - 4, 4);
    {
        /* Eight bytes at a time (the mask repeats every four), then the tail. */
        uint64_t mask8, word, seen = 0;
        Py_ssize_t i = 0;
        memcpy(&mask8, mask, 4);
        memcpy((unsigned char *)&mask8 + 4, mask, 4);
        for (; i + 8 <= length; i += 8) {
            memcpy(&word, data + start + i, 8);
            word ^= mask8;
            seen |= word;
            memcpy(payload + i, &word, 8);
        }
        for (; i < length; i++) {
            unsigned char c = data[start + i] ^ mask[i & 3];
            payload[i] = c;
            acc |= c;
        }
        if (seen & UINT64_C(0x8080808080808080))
            acc |= 0x80;
    }
    if (acc & 0x80 || payload[0] == '{')
        goto none;
    nl = memchr(payload, '\n', (size_t)length);
    if (nl == NULL || nl == payload)
        goto none;
    newline = nl - payload;
    id_len = PyBytes_GET_SIZE(prefix);
    rest = length - newline;
    size = id_len + rest;
    if (size >= 65536)
        goto none;
    hlen = size < 126 ? 2 : 4;
    PyBuffer_Release(&view);

    dest = PyUnicode_DecodeASCII((const char *)payload, newline, NULL);
    if (dest == NULL)
        return NULL;
    frame = PyBytes_FromStringAndSize(NULL, hlen + size);
    if (frame == NULL) {
        Py_DECREF(dest);
        return NULL;
    }
    out = PyBytes_AS_STRING(frame);
    out[0] = (char)0x81;
    if (hlen == 2) {
        out[1] = (char)size;
    } else {
        out[1] = 126;
        out[2] = (char)(size >> 8);
        out[3] = (char)(size & 0xff);
    }
    memcpy(out + hlen, PyBytes_AS_STRING(prefix), (size_t)id_len);
    memcpy(out + hlen + id_len, payload + newline, (size_t)rest);
    next = PyLong_FromSsize_t(end);
    if (next == NULL) {
        Py_DECREF(dest);
        Py_DECREF(frame);
        return NULL;
    }
    result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(dest);
        Py_DECREF(frame);
        Py_DECREF(next);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, dest);
    PyTuple_SET_ITEM(result, 1, frame);
    PyTuple_SET_ITEM(result, 2, next);
    return result;

none:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"scan_one", (PyCFunction)(void (*)(void))scan_one, METH_FASTCALL,
     "scan_one(data, pos, end, limit, prefix) -> (dest, frame, next_pos) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sysadm_relayscan",
    "The bridge's relay step in C; bridge/relayscan.py is the reference.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__sysadm_relayscan(void)
{
    return PyModule_Create(&module);
}
