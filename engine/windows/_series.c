/*
 * The in-process window store's per-series loop, compiled (engine.windows._series).
 *
 * It owns one thing: `update_and_read`, the compiled `MemoryStore._update_and_read_python`
 * (engine/windows/memory.py) with the series kept in C arrays instead of Python
 * lists. The Python method stays as the reference: the same steps in the same
 * order, and tests hold the two (and Redis) equal on hostile streams. What the
 * store does around it (idempotency records, idle expiry, plans) stays in Python.
 *
 * A series holds the events of one entity value in one group, ordered by
 * (event time, transaction id): times (int64), ids (str, owned), and the value
 * each event carries: an int64 for numeric series (sums, extremes), a str for
 * distinct counts, nothing for counts. Dropping the oldest events moves an
 * offset; the arrays are compacted when the offset grows past a quarter of
 * their size. Groups with bucketed windows keep hourly buckets with running
 * totals (count and sum of every bucket before each), as the Python store.
 *
 * Sums are exact: each value fits in int64 (validation bounds amounts), sums
 * and running totals are 128-bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUCKET_MS 3600000LL
#define C_COUNT 1
#define C_SUM 2
#define C_MIN 3
#define C_MAX 4
#define C_DISTINCT 5
#define C_FIRST 6    /* ms since the oldest event in the window, + 1; 0 when none */
#define C_PREVIOUS 7 /* ms since the newest event other than the transaction, + 1; 0 when none */
#define C_NEW 8      /* 1 when the transaction passes the filter and no other event is in the window */

#define K_COUNT 0  /* no value per event */
#define K_NUMBER 1 /* an int64 per event */
#define K_STRING 2 /* a str per event */

typedef __int128 wide;

static inline int64_t floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* ------------------------------------------------------------------ Series */

typedef struct {
    PyObject_HEAD
    int kind;
    /* events: live ones are [off, off + n) of arrays of size cap */
    int64_t *ts;
    PyObject **ids;
    int64_t *nv;   /* K_NUMBER */
    PyObject **sv; /* K_STRING */
    Py_ssize_t off, n, cap;
    /* hourly buckets: live ones are [boff, boff + bn) */
    int64_t *bk;   /* bucket index (hours since the epoch), ascending */
    int64_t *cb;   /* events in every bucket before this one */
    wide *sb;      /* K_NUMBER: sum of every bucket before this one */
    int64_t *bmin; /* K_NUMBER */
    int64_t *bmax; /* K_NUMBER */
    Py_ssize_t boff, bn, bcap;
    int64_t n_all; /* events in every bucket */
    wide s_all;    /* sum of every bucket */
    PyObject *at;  /* dict transaction id -> event time, or NULL when ids are new */
    double expires;
} Series;

static void Series_dealloc(Series *s) {
    for (Py_ssize_t i = s->off; i < s->off + s->n; i++) {
        Py_DECREF(s->ids[i]);
        if (s->sv) Py_DECREF(s->sv[i]);
    }
    PyMem_Free(s->ts);
    PyMem_Free(s->ids);
    PyMem_Free(s->nv);
    PyMem_Free(s->sv);
    PyMem_Free(s->bk);
    PyMem_Free(s->cb);
    PyMem_Free(s->sb);
    PyMem_Free(s->bmin);
    PyMem_Free(s->bmax);
    Py_XDECREF(s->at);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static Py_ssize_t Series_len(Series *s) { return s->n; }

static PyObject *Series_times(Series *s, PyObject *unused) {
    PyObject *out = PyList_New(s->n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        PyObject *v = PyLong_FromLongLong(s->ts[s->off + i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyMethodDef Series_methods[] = {
    {"times", (PyCFunction)Series_times, METH_NOARGS, "The event times, oldest first (for tests and inspection)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Series_members[] = {
    {"expires", T_DOUBLE, offsetof(Series, expires), 0,
     "Wall clock (monotonic s) after which the series is idle, as Redis PEXPIRE."},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods Series_as_sequence = {
    .sq_length = (lenfunc)Series_len,
};

static PyTypeObject SeriesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "engine.windows._series.Series",
    .tp_doc = "Events of one entity value in one group (made by update_and_read).",
    .tp_basicsize = sizeof(Series),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Series_dealloc,
    .tp_methods = Series_methods,
    .tp_members = Series_members,
    .tp_as_sequence = &Series_as_sequence,
};

static Series *Series_create(int kind, int index_ids) {
    Series *s = PyObject_New(Series, &SeriesType);
    if (!s) return NULL;
    s->kind = kind;
    s->ts = NULL;
    s->ids = NULL;
    s->nv = NULL;
    s->sv = NULL;
    s->off = s->n = s->cap = 0;
    s->bk = s->cb = s->bmin = s->bmax = NULL;
    s->sb = NULL;
    s->boff = s->bn = s->bcap = 0;
    s->n_all = 0;
    s->s_all = 0;
    s->at = NULL;
    s->expires = 0.0;
    if (index_ids) {
        s->at = PyDict_New();
        if (!s->at) {
            Py_DECREF(s);
            return NULL;
        }
    }
    return s;
}

#define GROW(ptr, type, size)                                              \
    do {                                                                   \
        type *grown_ = PyMem_Realloc((ptr), sizeof(type) * (size_t)(size)); \
        if (!grown_) {                                                     \
            PyErr_NoMemory();                                              \
            return -1;                                                     \
        }                                                                  \
        (ptr) = grown_;                                                    \
    } while (0)

/* Room for one more event at the end of the live range. */
static int events_room(Series *s) {
    if (s->off + s->n < s->cap) return 0;
    if (s->off > 0 && s->off >= s->cap / 4) { /* compact: move the live events to the front */
        memmove(s->ts, s->ts + s->off, sizeof(int64_t) * (size_t)s->n);
        memmove(s->ids, s->ids + s->off, sizeof(PyObject *) * (size_t)s->n);
        if (s->nv) memmove(s->nv, s->nv + s->off, sizeof(int64_t) * (size_t)s->n);
        if (s->sv) memmove(s->sv, s->sv + s->off, sizeof(PyObject *) * (size_t)s->n);
        s->off = 0;
        return 0;
    }
    Py_ssize_t cap = s->cap < 4 ? 4 : s->cap * 2;
    GROW(s->ts, int64_t, cap);
    GROW(s->ids, PyObject *, cap);
    if (s->kind == K_NUMBER) GROW(s->nv, int64_t, cap);
    if (s->kind == K_STRING) GROW(s->sv, PyObject *, cap);
    s->cap = cap;
    return 0;
}

/* Insert an event at position i (0 <= i <= n) of the live range; steals no references. */
static int events_insert(Series *s, Py_ssize_t i, int64_t t, PyObject *id, int64_t nv, PyObject *sv) {
    if (events_room(s) < 0) return -1;
    Py_ssize_t at = s->off + i, tail = s->n - i;
    if (tail > 0) {
        memmove(s->ts + at + 1, s->ts + at, sizeof(int64_t) * (size_t)tail);
        memmove(s->ids + at + 1, s->ids + at, sizeof(PyObject *) * (size_t)tail);
        if (s->nv) memmove(s->nv + at + 1, s->nv + at, sizeof(int64_t) * (size_t)tail);
        if (s->sv) memmove(s->sv + at + 1, s->sv + at, sizeof(PyObject *) * (size_t)tail);
    }
    s->ts[at] = t;
    Py_INCREF(id);
    s->ids[at] = id;
    if (s->nv) s->nv[at] = nv;
    if (s->sv) {
        Py_INCREF(sv);
        s->sv[at] = sv;
    }
    s->n++;
    return 0;
}

static void events_delete(Series *s, Py_ssize_t i) {
    Py_ssize_t at = s->off + i, tail = s->n - i - 1;
    Py_DECREF(s->ids[at]);
    if (s->sv) Py_DECREF(s->sv[at]);
    if (tail > 0) {
        memmove(s->ts + at, s->ts + at + 1, sizeof(int64_t) * (size_t)tail);
        memmove(s->ids + at, s->ids + at + 1, sizeof(PyObject *) * (size_t)tail);
        if (s->nv) memmove(s->nv + at, s->nv + at + 1, sizeof(int64_t) * (size_t)tail);
        if (s->sv) memmove(s->sv + at, s->sv + at + 1, sizeof(PyObject *) * (size_t)tail);
    }
    s->n--;
    if (s->n == 0) s->off = 0;
}

/* Drop the k oldest events (and their ids from the index). */
static int events_drop_oldest(Series *s, Py_ssize_t k) {
    for (Py_ssize_t i = s->off; i < s->off + k; i++) {
        if (s->at && PyDict_DelItem(s->at, s->ids[i]) < 0) return -1;
        Py_DECREF(s->ids[i]);
        if (s->sv) Py_DECREF(s->sv[i]);
    }
    s->off += k;
    s->n -= k;
    if (s->n == 0) s->off = 0;
    return 0;
}

/* Positions in ts[0:hi] (of the live range), as Python's bisect_left / bisect_right. */
static inline Py_ssize_t left_of(const int64_t *a, Py_ssize_t lo, Py_ssize_t hi, int64_t x) {
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static inline Py_ssize_t right_of(const int64_t *a, Py_ssize_t lo, Py_ssize_t hi, int64_t x) {
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (x < a[mid]) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* Where (t, id) is or would be in (event time, transaction id) order; -1 on error. */
static Py_ssize_t events_position(Series *s, int64_t t, PyObject *id) {
    const int64_t *ts = s->ts + s->off;
    PyObject **ids = s->ids + s->off;
    Py_ssize_t lo = left_of(ts, 0, s->n, t);
    Py_ssize_t hi = right_of(ts, lo, s->n, t);
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        int less = PyObject_RichCompareBool(ids[mid], id, Py_LT);
        if (less < 0) return -1;
        if (less) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Room for one more bucket at the end of the live buckets. */
static int buckets_room(Series *s) {
    if (s->boff + s->bn < s->bcap) return 0;
    int numeric = s->kind == K_NUMBER;
    if (s->boff > 0 && s->boff >= s->bcap / 4) {
        memmove(s->bk, s->bk + s->boff, sizeof(int64_t) * (size_t)s->bn);
        memmove(s->cb, s->cb + s->boff, sizeof(int64_t) * (size_t)s->bn);
        if (numeric) {
            memmove(s->sb, s->sb + s->boff, sizeof(wide) * (size_t)s->bn);
            memmove(s->bmin, s->bmin + s->boff, sizeof(int64_t) * (size_t)s->bn);
            memmove(s->bmax, s->bmax + s->boff, sizeof(int64_t) * (size_t)s->bn);
        }
        s->boff = 0;
        return 0;
    }
    Py_ssize_t cap = s->bcap < 4 ? 4 : s->bcap * 2;
    GROW(s->bk, int64_t, cap);
    GROW(s->cb, int64_t, cap);
    if (numeric) {
        GROW(s->sb, wide, cap);
        GROW(s->bmin, int64_t, cap);
        GROW(s->bmax, int64_t, cap);
    }
    s->bcap = cap;
    return 0;
}

/* Add an event to the bucket of its hour, anywhere in the series (a late event, or a new hour). */
static int buckets_add(Series *s, int64_t t, int64_t value) {
    int numeric = s->kind == K_NUMBER;
    int64_t j = floordiv(t, BUCKET_MS);
    Py_ssize_t i = left_of(s->bk + s->boff, 0, s->bn, j);
    if (i == s->bn || s->bk[s->boff + i] != j) {
        if (buckets_room(s) < 0) return -1;
        Py_ssize_t at = s->boff + i, tail = s->bn - i;
        int64_t before = i < s->bn ? s->cb[at] : s->n_all;
        wide sum_before = 0;
        if (numeric) sum_before = i < s->bn ? s->sb[at] : s->s_all;
        if (tail > 0) {
            memmove(s->bk + at + 1, s->bk + at, sizeof(int64_t) * (size_t)tail);
            memmove(s->cb + at + 1, s->cb + at, sizeof(int64_t) * (size_t)tail);
            if (numeric) {
                memmove(s->sb + at + 1, s->sb + at, sizeof(wide) * (size_t)tail);
                memmove(s->bmin + at + 1, s->bmin + at, sizeof(int64_t) * (size_t)tail);
                memmove(s->bmax + at + 1, s->bmax + at, sizeof(int64_t) * (size_t)tail);
            }
        }
        s->bk[at] = j;
        s->cb[at] = before;
        if (numeric) {
            s->sb[at] = sum_before;
            s->bmin[at] = value;
            s->bmax[at] = value;
        }
        s->bn++;
    } else if (numeric) {
        Py_ssize_t at = s->boff + i;
        if (value < s->bmin[at]) s->bmin[at] = value;
        if (value > s->bmax[at]) s->bmax[at] = value;
    }
    for (Py_ssize_t k = s->boff + i + 1; k < s->boff + s->bn; k++) { /* one more event before each later bucket */
        s->cb[k] += 1;
        if (numeric) s->sb[k] += value;
    }
    s->n_all += 1;
    if (numeric) s->s_all += value;
    return 0;
}

static void buckets_drop_before(Series *s, int64_t j) {
    Py_ssize_t k = left_of(s->bk + s->boff, 0, s->bn, j);
    s->boff += k;
    s->bn -= k;
    if (s->bn == 0) s->boff = 0;
}

/* --------------------------------------------------------------- GroupSpec */

typedef struct {
    PyObject_HEAD
    PyObject *series; /* entity value -> Series (an OrderedDict: written order is expiry order) */
    int64_t retention_ms;
    double idle_s;
    int capped, numeric, kind;
    int64_t bucket_ms;
    Py_ssize_t ncounts, nother, nhourly, ndelayed;
    int64_t *counts;  /* (output, reach) */
    int64_t *other;   /* (output, code, reach, delay) */
    int64_t *hourly;  /* (output, code, reach) */
    int64_t *delayed; /* (output, code, reach, delay) */
    Py_ssize_t max_output;
} GroupSpec;

static void GroupSpec_dealloc(GroupSpec *g) {
    Py_XDECREF(g->series);
    PyMem_Free(g->counts);
    PyMem_Free(g->other);
    PyMem_Free(g->hourly);
    PyMem_Free(g->delayed);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

/* Read a tuple of `width`-tuples of ints into a new C array; checks codes (column 1) when asked. */
static int read_rows(PyObject *rows, int width, int64_t **out, Py_ssize_t *count, Py_ssize_t *max_output,
                     int codes_from, int kind, int bucketed, const char *what) {
    PyObject *seq = PySequence_Fast(rows, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t *arr = PyMem_Malloc(sizeof(int64_t) * (size_t)(n * width + 1));
    if (!arr) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != width) {
            PyErr_Format(PyExc_TypeError, "%s: each row must be a tuple of %d ints", what, width);
            goto fail;
        }
        for (int c = 0; c < width; c++) {
            int64_t v = PyLong_AsLongLong(PyTuple_GET_ITEM(row, c));
            if (v == -1 && PyErr_Occurred()) goto fail;
            arr[i * width + c] = v;
        }
        if (arr[i * width] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: negative output index", what);
            goto fail;
        }
        if (arr[i * width] > *max_output) *max_output = (Py_ssize_t)arr[i * width];
        if (codes_from) {
            int64_t code = arr[i * width + 1];
            int ok = code == C_COUNT || (kind == K_NUMBER && (code == C_SUM || code == C_MIN || code == C_MAX)) ||
                     (!bucketed && code == C_DISTINCT && kind != K_COUNT) ||
                     (!bucketed && (code == C_FIRST || code == C_PREVIOUS || code == C_NEW));
            if (!ok) {
                PyErr_Format(PyExc_ValueError, "%s: aggregate code %lld is not supported by this series", what,
                             (long long)code);
                goto fail;
            }
        }
    }
    Py_DECREF(seq);
    *out = arr;
    *count = n;
    return 0;
fail:
    PyMem_Free(arr);
    Py_DECREF(seq);
    return -1;
}

static int GroupSpec_init(GroupSpec *g, PyObject *args, PyObject *kwds) {
    PyObject *series, *counts, *other, *hourly, *delayed;
    long long retention_ms, bucket_ms;
    double idle_s;
    int capped, numeric;
    if (!PyArg_ParseTuple(args, "OLdppLOOOO:GroupSpec", &series, &retention_ms, &idle_s, &capped, &numeric,
                          &bucket_ms, &counts, &other, &hourly, &delayed))
        return -1;
    if (!PyDict_Check(series)) {
        PyErr_SetString(PyExc_TypeError, "GroupSpec: series must be a dict");
        return -1;
    }
    if (g->series) {
        PyErr_SetString(PyExc_RuntimeError, "GroupSpec: already initialised");
        return -1;
    }
    Py_INCREF(series);
    g->series = series;
    g->retention_ms = retention_ms;
    g->idle_s = idle_s;
    g->capped = capped;
    g->numeric = numeric;
    g->kind = numeric ? K_NUMBER : (capped ? K_STRING : K_COUNT);
    g->bucket_ms = bucket_ms;
    g->max_output = -1;
    if (read_rows(counts, 2, &g->counts, &g->ncounts, &g->max_output, 0, g->kind, 0, "counts") < 0) return -1;
    if (read_rows(other, 4, &g->other, &g->nother, &g->max_output, 1, g->kind, 0, "other") < 0) return -1;
    if (read_rows(hourly, 3, &g->hourly, &g->nhourly, &g->max_output, 1, g->kind, 1, "hourly") < 0) return -1;
    if (read_rows(delayed, 4, &g->delayed, &g->ndelayed, &g->max_output, 1, g->kind, 1, "delayed") < 0) return -1;
    if ((g->nhourly || g->ndelayed) && bucket_ms <= 0) {
        PyErr_SetString(PyExc_ValueError, "GroupSpec: bucketed windows need a bucket retention");
        return -1;
    }
    return 0;
}

static PyMemberDef GroupSpec_members[] = {
    {"series", T_OBJECT, offsetof(GroupSpec, series), READONLY, "Its series by entity value."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject GroupSpecType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "engine.windows._series.GroupSpec",
    .tp_doc = "What update_and_read needs of one window group, read once per plan.\n\n"
              "GroupSpec(series, retention_ms, idle_s, capped, numeric, bucket_ms, counts, other, hourly, delayed)",
    .tp_basicsize = sizeof(GroupSpec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GroupSpec_init,
    .tp_dealloc = (destructor)GroupSpec_dealloc,
    .tp_members = GroupSpec_members,
};

/* ---------------------------------------------------------- the main loop */

static PyObject *str_move_to_end;

static int to_int64(PyObject *value, int64_t *out) {
    if (PyLong_CheckExact(value)) {
        *out = PyLong_AsLongLong(value);
    } else {
        PyObject *as_int = PyNumber_Long(value); /* int(value), as the Python store */
        if (!as_int) return -1;
        *out = PyLong_AsLongLong(as_int);
        Py_DECREF(as_int);
    }
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *wide_to_long(wide v) {
    if (v >= INT64_MIN && v <= INT64_MAX) return PyLong_FromLongLong((long long)v);
    /* beyond int64: hi * 2**64 + lo */
    int negative = v < 0;
    unsigned __int128 m = negative ? (unsigned __int128)(-(v + 1)) + 1 : (unsigned __int128)v;
    PyObject *hi = PyLong_FromUnsignedLongLong((unsigned long long)(m >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)m);
    PyObject *shift = PyLong_FromLong(64);
    PyObject *out = NULL, *shifted = NULL, *sum = NULL;
    if (hi && lo && shift && (shifted = PyNumber_Lshift(hi, shift)) && (sum = PyNumber_Add(shifted, lo)))
        out = negative ? PyNumber_Negative(sum) : (Py_INCREF(sum), sum);
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    Py_XDECREF(sum);
    return out;
}

static int compare_int64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Distinct values of events [lo, hi) of the live range ('' not counted); -1 on error. */
static Py_ssize_t distinct(Series *s, Py_ssize_t lo, Py_ssize_t hi) {
    if (lo >= hi) return 0;
    if (s->kind == K_STRING) {
        PyObject *set = PySet_New(NULL);
        if (!set) return -1;
        for (Py_ssize_t i = s->off + lo; i < s->off + hi; i++) {
            PyObject *v = s->sv[i];
            if (PyUnicode_Check(v) && PyUnicode_GET_LENGTH(v) == 0) continue;
            if (PySet_Add(set, v) < 0) {
                Py_DECREF(set);
                return -1;
            }
        }
        Py_ssize_t n = PySet_GET_SIZE(set);
        Py_DECREF(set);
        return n;
    }
    if (s->kind == K_NUMBER) { /* sort a copy, count the runs */
        Py_ssize_t n = hi - lo;
        int64_t *copy = PyMem_Malloc(sizeof(int64_t) * (size_t)n);
        if (!copy) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(copy, s->nv + s->off + lo, sizeof(int64_t) * (size_t)n);
        qsort(copy, (size_t)n, sizeof(int64_t), compare_int64);
        Py_ssize_t runs = 1;
        for (Py_ssize_t i = 1; i < n; i++) runs += copy[i] != copy[i - 1];
        PyMem_Free(copy);
        return runs;
    }
    return 0; /* a count series: every value is '' */
}

static wide sum_events(Series *s, Py_ssize_t lo, Py_ssize_t hi) {
    wide total = 0;
    for (Py_ssize_t i = s->off + lo; i < s->off + hi; i++) total += s->nv[i];
    return total;
}

/* min (sign -1) or max (sign 1) of events [lo, hi) and buckets [blo, bhi); 0 when both are empty. */
static int64_t extreme(Series *s, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t blo, Py_ssize_t bhi, int sign) {
    int any = 0;
    int64_t best = 0;
    for (Py_ssize_t i = s->off + lo; i < s->off + hi; i++) {
        int64_t v = s->nv[i];
        if (!any || (sign < 0 ? v < best : v > best)) best = v;
        any = 1;
    }
    const int64_t *b = sign < 0 ? s->bmin : s->bmax;
    for (Py_ssize_t i = s->boff + blo; i < s->boff + bhi; i++) {
        int64_t v = b[i];
        if (!any || (sign < 0 ? v < best : v > best)) best = v;
        any = 1;
    }
    return best;
}

/* Count or sum of buckets [lo, hi) (positions in the live buckets). */
static wide bucket_total(Series *s, int code, Py_ssize_t lo, Py_ssize_t hi) {
    if (lo >= hi) return 0;
    if (code == C_COUNT) return (hi < s->bn ? s->cb[s->boff + hi] : s->n_all) - s->cb[s->boff + lo];
    return (hi < s->bn ? s->sb[s->boff + hi] : s->s_all) - s->sb[s->boff + lo];
}

/* Add the event to one series (the add path of the Python store); *hi_out: events with time <= t. */
static int add_event(GroupSpec *g, Series *s, int64_t t, PyObject *txid, PyObject *bound_value, int first,
                     int64_t cap, int64_t hour, Py_ssize_t *hi_out) {
    int64_t value = 0;
    PyObject *svalue = NULL;
    if (g->kind == K_NUMBER) {
        if (to_int64(bound_value, &value) < 0) return -1;
    } else if (g->kind == K_STRING) {
        svalue = bound_value;
    }
    int has_old = 0;
    int64_t old = 0;
    if (s->at) {
        PyObject *o = PyDict_GetItemWithError(s->at, txid);
        if (o) {
            has_old = 1;
            old = PyLong_AsLongLong(o);
            if (old == -1 && PyErr_Occurred()) return -1;
        } else if (PyErr_Occurred()) {
            return -1;
        }
    }
    Py_ssize_t hi;
    if (!has_old && (s->n == 0 || t > s->ts[s->off + s->n - 1])) { /* in time order: appended */
        if (events_insert(s, s->n, t, txid, value, svalue) < 0) return -1;
        hi = 0; /* all of them, found after the drops */
    } else {
        if (has_old) { /* the same id again: replace, as ZADD does */
            Py_ssize_t i = events_position(s, old, txid);
            if (i < 0) return -1;
            events_delete(s, i);
        }
        Py_ssize_t i = events_position(s, t, txid);
        if (i < 0) return -1;
        if (events_insert(s, i, t, txid, value, svalue) < 0) return -1;
        hi = -1; /* found after the drops */
    }
    if (s->at) {
        PyObject *when = PyLong_FromLongLong(t);
        if (!when) return -1;
        int rc = PyDict_SetItem(s->at, txid, when);
        Py_DECREF(when);
        if (rc < 0) return -1;
    }
    if (g->bucket_ms) {
        if (first && !has_old) { /* each event enters its bucket once */
            int numeric = s->kind == K_NUMBER;
            int64_t newest = s->bn ? s->bk[s->boff + s->bn - 1] : 0;
            if (!s->bn || newest < hour) { /* a new newest hour: the common case */
                if (buckets_room(s) < 0) return -1;
                Py_ssize_t at = s->boff + s->bn;
                s->bk[at] = hour;
                s->cb[at] = s->n_all;
                if (numeric) {
                    s->sb[at] = s->s_all;
                    s->bmin[at] = value;
                    s->bmax[at] = value;
                    s->s_all += value;
                }
                s->n_all += 1;
                s->bn++;
            } else if (newest == hour) { /* the newest hour again */
                s->n_all += 1;
                if (numeric) {
                    Py_ssize_t at = s->boff + s->bn - 1;
                    s->s_all += value;
                    if (value < s->bmin[at]) s->bmin[at] = value;
                    if (value > s->bmax[at]) s->bmax[at] = value;
                }
            } else if (buckets_add(s, t, numeric ? value : 0) < 0) {
                return -1;
            }
        }
        int64_t keep_from = floordiv(t - g->bucket_ms, BUCKET_MS);
        if (s->bn && s->bk[s->boff] < keep_from) buckets_drop_before(s, keep_from);
    }
    /* Drop what no window can need any more: events older than t minus the retention. */
    int64_t cutoff = t - g->retention_ms;
    if (s->n && s->ts[s->off] < cutoff) {
        Py_ssize_t k = left_of(s->ts + s->off, 0, s->n, cutoff);
        if (events_drop_oldest(s, k) < 0) return -1;
    }
    if (g->capped && s->n > cap) { /* a value series keeps at most `cap` events, oldest first out */
        if (events_drop_oldest(s, s->n - (Py_ssize_t)cap) < 0) return -1;
    }
    *hi_out = hi >= 0 ? s->n : right_of(s->ts + s->off, 0, s->n, t);
    return 0;
}

/* Milliseconds since the newest event of [lo, hi) whose id is not txid, + 1; 0 when none; -1 on error. */
static int64_t since_previous(Series *s, Py_ssize_t lo, Py_ssize_t hi, int64_t t, PyObject *txid) {
    for (Py_ssize_t i = hi - 1; i >= lo; i--) {
        PyObject *id = s->ids[s->off + i];
        int same = id == txid ? 1 : PyObject_RichCompareBool(id, txid, Py_EQ);
        if (same < 0) return -1;
        if (!same) return t - s->ts[s->off + i] + 1;
    }
    return 0;
}

/* Read the group's windows for an event at t into raw; `passes`: the transaction passes the group's filter. */
static int read_windows(GroupSpec *g, Series *s, int64_t t, int64_t hour, Py_ssize_t hi, wide *raw, PyObject *txid,
                        int passes) {
    const int64_t *ts = s->ts + s->off;
    for (Py_ssize_t w = 0; w < g->ncounts; w++) {
        const int64_t *row = g->counts + 2 * w;
        raw[row[0]] = hi - right_of(ts, 0, hi, t - row[1]); /* events in (t - d, t] */
    }
    for (Py_ssize_t w = 0; w < g->nother; w++) {
        const int64_t *row = g->other + 4 * w;
        int64_t code = row[1], reach = row[2], delay = row[3];
        Py_ssize_t lo = right_of(ts, 0, hi, t - reach);
        Py_ssize_t top = delay ? right_of(ts, lo, hi, t - delay) : hi;
        if (code == C_COUNT) {
            raw[row[0]] = top - lo;
        } else if (code == C_SUM) {
            raw[row[0]] = sum_events(s, lo, top);
        } else if (code == C_DISTINCT) {
            Py_ssize_t n = distinct(s, lo, top);
            if (n < 0) return -1;
            raw[row[0]] = n;
        } else if (code == C_FIRST) {
            raw[row[0]] = lo < top ? t - ts[lo] + 1 : 0;
        } else if (code == C_PREVIOUS || code == C_NEW) {
            int64_t gap = since_previous(s, lo, top, t, txid);
            if (gap < 0) return -1;
            raw[row[0]] = code == C_PREVIOUS ? gap : (passes && !gap);
        } else {
            raw[row[0]] = extreme(s, lo, top, 0, 0, code == C_MIN ? -1 : 1);
        }
    }
    if (g->nhourly) {
        /* Whole hours after the hour of t - d up to the hour before t's, and t's hour from the events. */
        Py_ssize_t lo = left_of(ts, 0, hi, hour * BUCKET_MS);
        const int64_t *bk = s->bk + s->boff;
        Py_ssize_t nbk = s->bn, bhi;
        if (nbk && bk[nbk - 1] == hour) bhi = nbk - 1;
        else if (!nbk || bk[nbk - 1] < hour) bhi = nbk;
        else bhi = right_of(bk, 0, nbk, hour - 1); /* a late event: newer hours exist */
        for (Py_ssize_t w = 0; w < g->nhourly; w++) {
            const int64_t *row = g->hourly + 3 * w;
            int64_t code = row[1], reach = row[2];
            Py_ssize_t blo = left_of(bk, 0, bhi, floordiv(t - reach, BUCKET_MS) + 1);
            if (code == C_COUNT) {
                raw[row[0]] = (hi - lo) + bucket_total(s, C_COUNT, blo, bhi);
            } else if (code == C_SUM) {
                raw[row[0]] = sum_events(s, lo, hi) + bucket_total(s, C_SUM, blo, bhi);
            } else {
                raw[row[0]] = extreme(s, lo, hi, blo, bhi, code == C_MIN ? -1 : 1);
            }
        }
    }
    for (Py_ssize_t w = 0; w < g->ndelayed; w++) {
        /* Whole hours after the hour of t - delay - d up to the hour before t - delay's. */
        const int64_t *row = g->delayed + 4 * w;
        int64_t code = row[1], reach = row[2], delay = row[3];
        int64_t last = floordiv(t - delay, BUCKET_MS) - 1;
        const int64_t *bk = s->bk + s->boff;
        if (!s->bn || bk[0] > last) continue; /* no bucket: 0 */
        Py_ssize_t blo = left_of(bk, 0, s->bn, floordiv(t - reach, BUCKET_MS) + 1);
        Py_ssize_t bhi = right_of(bk, blo, s->bn, last);
        if (blo >= bhi) raw[row[0]] = 0;
        else if (code == C_COUNT || code == C_SUM) raw[row[0]] = bucket_total(s, (int)code, blo, bhi);
        else raw[row[0]] = extreme(s, 0, 0, blo, bhi, code == C_MIN ? -1 : 1);
    }
    return 0;
}

PyDoc_STRVAR(update_and_read_doc,
             "update_and_read(table, groups, t, txid, first, raw_size, cap, new_ids, expire_idle, now, next_idle)\n"
             "--\n\n"
             "MemoryStore._update_and_read, compiled: add the event to each bound group's series (unless\n"
             "filtered out or too late), read its windows. `table` maps id(group) to its GroupSpec.\n"
             "Returns (raw values, the new soonest idle expiry).");

static PyObject *update_and_read(PyObject *module, PyObject *args) {
    PyObject *table, *groups, *txid;
    long long t_arg, cap;
    Py_ssize_t raw_size;
    int first, new_ids, expire_idle;
    double now, next_idle;
    if (!PyArg_ParseTuple(args, "O!O!LUpnLppdd:update_and_read", &PyDict_Type, &table, &PyTuple_Type, &groups, &t_arg,
                          &txid, &first, &raw_size, &cap, &new_ids, &expire_idle, &now, &next_idle))
        return NULL;
    if (raw_size < 0 || raw_size > 1000000) {
        PyErr_SetString(PyExc_ValueError, "update_and_read: raw_size out of range");
        return NULL;
    }
    int64_t t = t_arg;
    int64_t hour = floordiv(t, BUCKET_MS);
    wide *raw = PyMem_Calloc((size_t)raw_size + 1, sizeof(wide));
    if (!raw) return PyErr_NoMemory();
    Py_ssize_t ngroups = PyTuple_GET_SIZE(groups);
    for (Py_ssize_t k = 0; k < ngroups; k++) {
        PyObject *bound = PyTuple_GET_ITEM(groups, k);
        if (!PyTuple_Check(bound) || PyTuple_GET_SIZE(bound) != 4) {
            PyErr_SetString(PyExc_TypeError, "update_and_read: each bound group must be (group, entity, value, add)");
            goto fail;
        }
        PyObject *key = PyLong_FromVoidPtr(PyTuple_GET_ITEM(bound, 0));
        if (!key) goto fail;
        PyObject *spec_obj = PyDict_GetItemWithError(table, key);
        Py_DECREF(key);
        if (!spec_obj) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "update_and_read: a group not in the table");
            goto fail;
        }
        if (!PyObject_TypeCheck(spec_obj, &GroupSpecType) || !((GroupSpec *)spec_obj)->series) {
            PyErr_SetString(PyExc_TypeError, "update_and_read: table values must be initialised GroupSpecs");
            goto fail;
        }
        GroupSpec *g = (GroupSpec *)spec_obj;
        if (g->max_output >= raw_size) {
            PyErr_SetString(PyExc_ValueError, "update_and_read: a window output beyond raw_size");
            goto fail;
        }
        PyObject *entity = PyTuple_GET_ITEM(bound, 1);
        int add = PyObject_IsTrue(PyTuple_GET_ITEM(bound, 3));
        if (add < 0) goto fail;
        int passes = add; /* the transaction passes the group's filter (even when too late to be added) */
        PyObject *found = PyDict_GetItemWithError(g->series, entity);
        Series *s;
        if (!found) {
            if (PyErr_Occurred()) goto fail;
            if (!add) continue; /* nothing to read, and a filtered-out event writes nothing */
            s = Series_create(g->kind, !new_ids);
            if (!s) goto fail;
            int rc = PyObject_SetItem(g->series, entity, (PyObject *)s); /* the most recently written */
            Py_DECREF(s);                                               /* the dict holds it */
            if (rc < 0) goto fail;
        } else {
            if (!PyObject_TypeCheck(found, &SeriesType) || ((Series *)found)->kind != g->kind) {
                PyErr_SetString(PyExc_TypeError, "update_and_read: a series of another kind in the group");
                goto fail;
            }
            s = (Series *)found;
            if (add && s->n && t < s->ts[s->off + s->n - 1] - g->retention_ms)
                add = 0; /* too late: older than what the series keeps, it is only read */
        }
        Py_INCREF(s); /* kept alive across the calls below */
        Py_ssize_t hi;
        if (add) {
            if (expire_idle) {
                PyObject *moved = PyObject_CallMethodOneArg(g->series, str_move_to_end, entity);
                if (!moved) {
                    Py_DECREF(s);
                    goto fail;
                }
                Py_DECREF(moved);
                s->expires = now + g->idle_s;
                if (s->expires < next_idle) next_idle = s->expires;
            }
            if (add_event(g, s, t, txid, PyTuple_GET_ITEM(bound, 2), first, cap, hour, &hi) < 0) {
                Py_DECREF(s);
                goto fail;
            }
        } else {
            hi = right_of(s->ts + s->off, 0, s->n, t);
        }
        int rc = read_windows(g, s, t, hour, hi, raw, txid, passes);
        Py_DECREF(s);
        if (rc < 0) goto fail;
    }
    PyObject *values = PyTuple_New(raw_size);
    if (!values) goto fail;
    for (Py_ssize_t i = 0; i < raw_size; i++) {
        PyObject *v = wide_to_long(raw[i]);
        if (!v) {
            Py_DECREF(values);
            goto fail;
        }
        PyTuple_SET_ITEM(values, i, v);
    }
    PyMem_Free(raw);
    return Py_BuildValue("(Nd)", values, next_idle);
fail:
    PyMem_Free(raw);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"update_and_read", (PyCFunction)update_and_read, METH_VARARGS, update_and_read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "engine.windows._series",
    .m_doc = "The in-process window store's per-series loop, compiled (see engine/windows/memory.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__series(void) {
    if (PyType_Ready(&SeriesType) < 0 || PyType_Ready(&GroupSpecType) < 0) return NULL;
    str_move_to_end = PyUnicode_InternFromString("move_to_end");
    if (!str_move_to_end) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    Py_INCREF(&SeriesType);
    Py_INCREF(&GroupSpecType);
    if (PyModule_AddObject(m, "Series", (PyObject *)&SeriesType) < 0 ||
        PyModule_AddObject(m, "GroupSpec", (PyObject *)&GroupSpecType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
