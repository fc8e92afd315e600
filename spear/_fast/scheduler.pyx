# distutils: extra_compile_args = -ffp-contract=off
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled scheduler kernel; ``scheduler_py.py`` is its twin and the reference.

The score is evaluated with the same operations in the same order as the twin
(and ``-ffp-contract=off`` keeps the C compiler from fusing them into FMAs),
so both pick the same node bit for bit. See the twin for the formula.
"""

from libc.stdlib cimport malloc, free, qsort

__all__ = ["EPS", "WEIGHTS", "pick_node", "pick_nodes"]

EPS = 1e-9
WEIGHTS = (0.4, 0.4, 0.3, 1.0)

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


cdef inline double _score(double fc, double fm, double cc, double cm, double ld,
                          unsigned char wm, double pen,
                          double need_cpu, double need_mem) noexcept nogil:
    """Score of a node that fits; same operations, same order as the twin."""
    cdef double s
    s = _W_CPU * ((fc - need_cpu) / (cc if cc > _EPS else _EPS))
    s = s + _W_MEM * ((fm - need_mem) / (cm if cm > _EPS else _EPS))
    s = s - _W_LOAD * ld
    if wm != 0:
        s = s + _W_WARM
    s = s - pen
    return s


cdef Py_ssize_t _check_lengths(const double[:] free_cpu, const double[:] free_mem,
                               const double[:] cap_cpu, const double[:] cap_mem,
                               const double[:] load, const unsigned char[:] eligible,
                               const unsigned char[:] warm, const double[:] penalty) except -1:
    cdef Py_ssize_t n = free_cpu.shape[0]
    if (free_mem.shape[0] != n or cap_cpu.shape[0] != n or cap_mem.shape[0] != n
            or load.shape[0] != n or eligible.shape[0] != n or warm.shape[0] != n
            or penalty.shape[0] != n):
        raise ValueError("node arrays differ in length: %r" % ([
            free_cpu.shape[0], free_mem.shape[0], cap_cpu.shape[0], cap_mem.shape[0],
            load.shape[0], eligible.shape[0], warm.shape[0], penalty.shape[0]],))
    return n


def pick_node(const double[:] free_cpu, const double[:] free_mem,
              const double[:] cap_cpu, const double[:] cap_mem,
              const double[:] load, const unsigned char[:] eligible,
              const unsigned char[:] warm, const double[:] penalty,
              double need_cpu, double need_mem):
    """Return the index of the best-scoring candidate node, or -1 if none fits.

    Float arrays must expose a double buffer (``array('d')``), ``eligible``
    and ``warm`` a byte buffer (``array('B')``). Raises ValueError if their
    lengths differ.
    """
    cdef Py_ssize_t n = _check_lengths(free_cpu, free_mem, cap_cpu, cap_mem, load,
                                       eligible, warm, penalty)
    cdef Py_ssize_t i
    cdef Py_ssize_t best = -1
    cdef double best_s = 0.0
    cdef double s, fc, fm
    with nogil:
        for i in range(n):
            if eligible[i] == 0:
                continue
            fc = free_cpu[i]
            fm = free_mem[i]
            if not (fc >= need_cpu and fm >= need_mem):
                continue
            s = _score(fc, fm, cap_cpu[i], cap_mem[i], load[i], warm[i], penalty[i],
                       need_cpu, need_mem)
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


def pick_nodes(const double[:] free_cpu, const double[:] free_mem,
               const double[:] cap_cpu, const double[:] cap_mem,
               const double[:] load, const unsigned char[:] eligible,
               const unsigned char[:] warm, const double[:] penalty,
               double need_cpu, double need_mem, Py_ssize_t k):
    """Return up to ``k`` candidate indices, best first (ties: lower index first).

    Raises ValueError if the arrays differ in length or ``k`` is negative.
    """
    cdef Py_ssize_t n = _check_lengths(free_cpu, free_mem, cap_cpu, cap_mem, load,
                                       eligible, warm, penalty)
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
                if eligible[i] == 0:
                    continue
                fc = free_cpu[i]
                fm = free_mem[i]
                if not (fc >= need_cpu and fm >= need_mem):
                    continue
                s = _score(fc, fm, cap_cpu[i], cap_mem[i], load[i], warm[i], penalty[i],
                           need_cpu, need_mem)
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
