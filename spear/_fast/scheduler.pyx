# distutils: extra_compile_args = -ffp-contract=off
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled scheduler kernel; ``scheduler_py.py`` is its twin and the reference.

The score is evaluated with the same operations in the same order as the twin
(and ``-ffp-contract=off`` keeps the C compiler from fusing them into FMAs),
so both pick the same node bit for bit. See the twin for the formula.

The columns are read through raw pointers: ``array('d')``/``array('B')`` and
``bytearray`` (what the SMS's node table holds) are looked at directly, any
other buffer through a typed memoryview kept alive for the call. Acquiring
eight memoryviews cost more than scoring a small cluster.
"""

from cpython.array cimport array
from cpython.bytearray cimport PyByteArray_AS_STRING
from libc.stdlib cimport malloc, free, qsort

__all__ = ["BASELINE", "EPS", "FINISH", "WEIGHTS", "pick_node", "pick_nodes"]

EPS = 1e-9
WEIGHTS = (0.4, 0.4, 0.3, 1.0)
BASELINE = 0
FINISH = 1

cdef double _EPS = 1e-9
cdef double _W_CPU = 0.4
cdef double _W_MEM = 0.4
cdef double _W_LOAD = 0.3
cdef double _W_WARM = 1.0

# Above this k, pick_nodes sorts all candidates instead of insertion into k slots.
cdef Py_ssize_t _INSERT_MAX_K = 32

ctypedef struct Scored:
    double score
    Py_ssize_t index


ctypedef struct Req:
    double need_cpu
    double need_mem
    int finish
    double duration
    double cold
    double slope


cdef inline double _score(double fc, double fm, double cc, double cm, double ld,
                          unsigned char wm, double pen, double sp,
                          const Req *r) noexcept nogil:
    """Score of a node that fits; same operations, same order as the twin."""
    cdef double s
    cdef double need_cpu = r.need_cpu
    cdef double need_mem = r.need_mem
    if r.finish:
        s = -(r.duration * sp * (1.0 + r.slope * ld))
        if wm == 0:
            s = s - r.cold
        return s - pen
    s = _W_CPU * ((fc - need_cpu) / (cc if cc > _EPS else _EPS))
    s = s + _W_MEM * ((fm - need_mem) / (cm if cm > _EPS else _EPS))
    s = s - _W_LOAD * ld
    if wm != 0:
        s = s + _W_WARM
    s = s - pen
    return s


ctypedef struct Cols:
    const double *free_cpu
    const double *free_mem
    const double *cap_cpu
    const double *cap_mem
    const double *load
    const unsigned char *eligible
    const unsigned char *warm
    const double *penalty
    const double *speed  # NULL: 1.0 for every node
    Py_ssize_t n


cdef const double *_doubles(object x, list keep, Py_ssize_t *n) except? NULL:
    """A pointer to ``x``'s doubles and their count (contiguous; copied if not)."""
    cdef const double[:] view
    if type(x) is array and (<array>x).ob_descr.typecode == b'd':
        n[0] = len(x)
        return (<array>x).data.as_doubles
    view = x
    if view.shape[0] and view.strides[0] != sizeof(double):
        view = array('d', x)
    keep.append(view)
    n[0] = view.shape[0]
    return &view[0] if view.shape[0] else NULL


cdef const unsigned char *_bytes(object x, list keep, Py_ssize_t *n) except? NULL:
    """A pointer to ``x``'s bytes and their count (contiguous; copied if not)."""
    cdef const unsigned char[:] view
    if type(x) is bytearray:
        n[0] = len(x)
        return <const unsigned char *>PyByteArray_AS_STRING(x)
    if type(x) is array and (<array>x).ob_descr.typecode == b'B':
        n[0] = len(x)
        return (<array>x).data.as_uchars
    view = x
    if view.shape[0] and view.strides[0] != 1:
        view = bytes(x)
    keep.append(view)
    n[0] = view.shape[0]
    return &view[0] if view.shape[0] else NULL


cdef int _columns(Cols *c, list keep, object free_cpu, object free_mem, object cap_cpu,
                  object cap_mem, object load, object eligible, object warm,
                  object penalty, object speed) except -1:
    """Fill ``c`` from the columns (``speed`` may be None); ValueError if their
    lengths differ."""
    cdef Py_ssize_t lens[9]
    c.free_cpu = _doubles(free_cpu, keep, &lens[0])
    c.free_mem = _doubles(free_mem, keep, &lens[1])
    c.cap_cpu = _doubles(cap_cpu, keep, &lens[2])
    c.cap_mem = _doubles(cap_mem, keep, &lens[3])
    c.load = _doubles(load, keep, &lens[4])
    c.eligible = _bytes(eligible, keep, &lens[5])
    c.warm = _bytes(warm, keep, &lens[6])
    c.penalty = _doubles(penalty, keep, &lens[7])
    cdef Py_ssize_t m = 8
    c.speed = NULL
    if speed is not None:
        c.speed = _doubles(speed, keep, &lens[8])
        m = 9
    cdef Py_ssize_t i
    for i in range(1, m):
        if lens[i] != lens[0]:
            raise ValueError("node arrays differ in length: %r" % ([lens[j] for j in range(m)],))
    c.n = lens[0]
    return 0


cdef int _request(Req *r, double need_cpu, double need_mem, int policy, double duration,
                  double cold, double slope) except -1:
    if policy != 0 and policy != 1:
        raise ValueError(f"unknown scoring policy {policy!r}")
    r.need_cpu = need_cpu
    r.need_mem = need_mem
    r.finish = policy == 1
    r.duration = duration
    r.cold = cold
    r.slope = slope
    return 0


def pick_node(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
              double need_cpu, double need_mem, int policy=0, double duration=0.0,
              double cold=0.0, speed=None, double slope=1.0):
    """Return the index of the best-scoring candidate node, or -1 if none fits.

    Float arrays must expose a double buffer (``array('d')``), ``eligible``
    and ``warm`` a byte buffer (``array('B')``). ``policy``, ``duration``,
    ``cold``: see the twin. Raises ValueError if their lengths differ or the
    policy is unknown.
    """
    cdef Req r
    _request(&r, need_cpu, need_mem, policy, duration, cold, slope)
    cdef Cols c
    cdef list keep = []
    _columns(&c, keep, free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
             speed)
    cdef Py_ssize_t n = c.n
    cdef Py_ssize_t i
    cdef Py_ssize_t best = -1
    cdef double best_s = 0.0
    cdef double s, fc, fm
    with nogil:
        for i in range(n):
            if c.eligible[i] == 0:
                continue
            fc = c.free_cpu[i]
            fm = c.free_mem[i]
            if not (fc >= need_cpu and fm >= need_mem):
                continue
            s = _score(fc, fm, c.cap_cpu[i], c.cap_mem[i], c.load[i], c.warm[i], c.penalty[i],
                       c.speed[i] if c.speed != NULL else 1.0, &r)
            if s != s:  # NaN: corrupt figures never win
                continue
            if best < 0 or s > best_s:
                best = i
                best_s = s
    return best


cdef int _cmp_scored(const void *a, const void *b) noexcept nogil:
    # Score descending, then index ascending: a total order since no NaN gets here.
    cdef const Scored *x = <const Scored *>a
    cdef const Scored *y = <const Scored *>b
    if x.score > y.score:
        return -1
    if x.score < y.score:
        return 1
    return -1 if x.index < y.index else (1 if x.index > y.index else 0)


def pick_nodes(free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
               double need_cpu, double need_mem, Py_ssize_t k, int policy=0,
               double duration=0.0, double cold=0.0, speed=None, double slope=1.0):
    """Return up to ``k`` candidate indices, best first (ties: lower index first).

    Raises ValueError if the arrays differ in length, ``k`` is negative or
    the policy is unknown.
    """
    cdef Req r
    _request(&r, need_cpu, need_mem, policy, duration, cold, slope)
    cdef Cols c
    cdef list keep = []
    _columns(&c, keep, free_cpu, free_mem, cap_cpu, cap_mem, load, eligible, warm, penalty,
             speed)
    cdef Py_ssize_t n = c.n
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0 or n == 0:
        return []
    cdef bint sort_all = k > _INSERT_MAX_K
    cdef Py_ssize_t cap = n if sort_all else (k if k < n else n)
    cdef Scored *buf = <Scored *>malloc(<size_t>cap * sizeof(Scored))
    if buf == NULL:
        raise MemoryError()
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t i, j
    cdef double s, fc, fm
    try:
        with nogil:
            for i in range(n):
                if c.eligible[i] == 0:
                    continue
                fc = c.free_cpu[i]
                fm = c.free_mem[i]
                if not (fc >= need_cpu and fm >= need_mem):
                    continue
                s = _score(fc, fm, c.cap_cpu[i], c.cap_mem[i], c.load[i], c.warm[i],
                           c.penalty[i], c.speed[i] if c.speed != NULL else 1.0, &r)
                if s != s:
                    continue
                if sort_all:
                    buf[count].score = s
                    buf[count].index = i
                    count += 1
                    continue
                # Insertion into the sorted top-k: indices arrive ascending, so a
                # new entry goes after every entry with an equal or higher score.
                if count == cap:
                    if not (s > buf[count - 1].score):
                        continue
                    j = count - 1
                else:
                    j = count
                    count += 1
                while j > 0 and s > buf[j - 1].score:
                    buf[j] = buf[j - 1]
                    j -= 1
                buf[j].score = s
                buf[j].index = i
            if sort_all:
                qsort(buf, <size_t>count, sizeof(Scored), _cmp_scored)
                if count > k:
                    count = k
        return [buf[j].index for j in range(count)]
    finally:
        free(buf)
