/* flock-cni: the CNI plugin executable (CNI spec 1.0.0 and 1.1.0), a static binary.
 *
 * A thin shim: it forwards the runtime's request (the CNI_* environment and the network
 * config from stdin) to flock-agent over the agent's unix socket (network config key
 * "socket") and prints the agent's answer. The agent does the work, serialized with its
 * reconcile state. VERSION is answered here, without the agent.
 *
 * It runs on the node from a CNI bin dir, so it needs nothing there: no interpreter, no
 * shared library (`make -C cni-shim` links it statically). It reads the network config
 * only as far as it must: the whole document is checked to be JSON (bounded: at most
 * MAX_NETWORK_CONFIG_BYTES, nested at most MAX_DEPTH deep), and the top-level keys
 * "socket" and "cniVersion" are decoded; everything else is the agent's to judge.
 *
 * Wire format, both directions: a 4-byte big-endian length, then that many bytes of JSON
 * (flock.adapters.cnisocket). Request {"env": {CNI_*: value}, "stdin": "<network config>"},
 * answer {"exitCode": int, "stdout": "<CNI result or error JSON>"}. Environment bytes that
 * are not UTF-8 travel as "\udcXX" escapes (Python's surrogateescape), as the agent expects.
 *
 * tests/unit/test_cni_shim.py keeps the values below equal to flock.core.cnispec's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LATEST_VERSION "1.1.0"
#define VERSION_ANSWER "{\"cniVersion\": \"1.1.0\", \"supportedVersions\": [\"1.0.0\", \"1.1.0\"]}"
#define DEFAULT_SOCKET "/run/flock/cni.sock"
#define CONNECT_SECONDS 5
#define ANSWER_SECONDS 120 /* a busy node may queue many ADDs; the runtime has its own limit */
#define MAX_FRAME (16 * 1024 * 1024)
#define MAX_NETWORK_CONFIG_BYTES (1024 * 1024)
#define MAX_DEPTH 512 /* JSON nesting: deeper is refused as not JSON, not a stack overflow */

/* CNI spec error codes, named as in flock.core.cnispec */
enum { INVALID_ENV = 4, IO_FAILURE = 5, DECODE_FAILURE = 6, INVALID_CONFIG = 7, TRY_AGAIN_LATER = 11,
       PLUGIN_NOT_AVAILABLE = 50 };

extern char **environ;

#ifdef __SANITIZE_ADDRESS__ /* the fuzzing build (Makefile): what a process holds at exit is no leak */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }
#endif

/* --- an output buffer that refuses to grow past its limit ------------------------------ */

struct buf { unsigned char *data; size_t len, cap, limit; int over, nomem; };

static void put(struct buf *b, const void *bytes, size_t n) {
    if (b->over || b->nomem) return;
    if (n > b->limit - b->len) { b->over = 1; return; }
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n) cap = cap > b->limit / 2 ? b->limit : cap * 2;
        unsigned char *grown = realloc(b->data, cap);
        if (!grown) { b->nomem = 1; return; }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* Length of the valid UTF-8 sequence at s (s[0] >= 0x80), or 0: no overlong forms, no
 * surrogates, nothing above U+10FFFF (what Python's strict decoder accepts). */
static size_t utf8_sequence(const unsigned char *s, size_t n) {
    size_t len;
    uint32_t cp, min;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) { len = 2; cp = s[0] & 0x1F; min = 0x80; }
    else if (s[0] >= 0xE0 && s[0] <= 0xEF) { len = 3; cp = s[0] & 0x0F; min = 0x800; }
    else if (s[0] >= 0xF0 && s[0] <= 0xF4) { len = 4; cp = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    return cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) ? 0 : len;
}

/* Any bytes as a JSON string: UTF-8 kept, other bytes as \udcXX (surrogateescape). */
static void put_json_string(struct buf *b, const unsigned char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\') run++;
        put(b, s + i, run - i);
        if (run == n) break;
        i = run;
        unsigned char c = s[i];
        size_t k = c >= 0x80 ? utf8_sequence(s + i, n - i) : 0;
        if (k) { put(b, s + i, k); i += k; continue; }
        char esc[7] = {'\\', 'u', c >= 0x80 ? 'd' : '0', c >= 0x80 ? 'c' : '0', hex[c >> 4], hex[c & 15], 0};
        if (c == '"' || c == '\\') { esc[1] = (char)c; esc[2] = 0; }
        else if (c == '\n') { esc[1] = 'n'; esc[2] = 0; }
        else if (c == '\t') { esc[1] = 't'; esc[2] = 0; }
        else if (c == '\r') { esc[1] = 'r'; esc[2] = 0; }
        puts_(b, esc);
        i++;
    }
    put(b, "\"", 1);
}

/* --- a JSON checker that remembers some top-level values ------------------------------ */

struct field { const char *name; const unsigned char *start, *end; }; /* end == NULL: absent */
struct scan { const unsigned char *begin, *p, *end; const char *error; };

static int fail(struct scan *j, const char *what) { if (!j->error) j->error = what; return -1; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int hex_value(unsigned char c) {
    return is_digit(c) ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
}
static void skip_space(struct scan *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int scan_string(struct scan *j) { /* at the opening quote */
    for (j->p++; j->p < j->end;) {
        unsigned char c = *j->p;
        if (c == '"') { j->p++; return 0; }
        if (c == '\\') {
            if (j->end - j->p < 2) break;
            if (j->p[1] == 'u') {
                if (j->end - j->p < 6) break;
                for (int i = 2; i < 6; i++) if (hex_value(j->p[i]) < 0) return fail(j, "invalid \\u escape");
                j->p += 6;
            } else if (j->p[1] && strchr("\"\\/bfnrt", j->p[1])) j->p += 2;
            else return fail(j, "invalid escape");
        } else if (c < 0x20) return fail(j, "control character in a string");
        else if (c < 0x80) j->p++;
        else {
            size_t k = utf8_sequence(j->p, (size_t)(j->end - j->p));
            if (!k) return fail(j, "invalid UTF-8");
            j->p += k;
        }
    }
    return fail(j, "unterminated string");
}

static int scan_word(struct scan *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n)) return fail(j, "expected a value");
    j->p += n;
    return 0;
}

static int scan_number(struct scan *j) { /* Python's json also takes NaN, Infinity and -Infinity */
    if (*j->p == '-') j->p++;
    if (j->p < j->end && *j->p == 'I') return scan_word(j, "Infinity");
    if (j->p < j->end && *j->p == '0') j->p++;
    else if (j->p < j->end && is_digit(*j->p)) while (j->p < j->end && is_digit(*j->p)) j->p++;
    else return fail(j, "invalid number");
    if (j->p < j->end && *j->p == '.') {
        if (++j->p >= j->end || !is_digit(*j->p)) return fail(j, "invalid number");
        while (j->p < j->end && is_digit(*j->p)) j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        if (++j->p < j->end && (*j->p == '+' || *j->p == '-')) j->p++;
        if (j->p >= j->end || !is_digit(*j->p)) return fail(j, "invalid number");
        while (j->p < j->end && is_digit(*j->p)) j->p++;
    }
    return 0;
}

static int decode_string(const unsigned char *s, const unsigned char *end, unsigned char *out, size_t cap,
                         size_t *len, int *lossy);

static int scan_value(struct scan *j, int depth);

static int scan_container(struct scan *j, int depth, struct field *fields, size_t nfields) {
    unsigned char close = *j->p == '{' ? '}' : ']';
    if (depth > MAX_DEPTH) return fail(j, "nested too deeply");
    j->p++;
    skip_space(j);
    if (j->p < j->end && *j->p == close) { j->p++; return 0; }
    for (;;) {
        const unsigned char *key = NULL, *key_end = NULL;
        skip_space(j);
        if (close == '}') {
            if (j->p >= j->end || *j->p != '"') return fail(j, "expected a key");
            key = j->p;
            if (scan_string(j)) return -1;
            key_end = j->p;
            skip_space(j);
            if (j->p >= j->end || *j->p != ':') return fail(j, "expected ':'");
            j->p++;
            skip_space(j);
        }
        const unsigned char *value = j->p;
        if (scan_value(j, depth)) return -1;
        for (size_t i = 0; key && i < nfields; i++) { /* a key repeated: the last one counts, as in Python */
            unsigned char name[32];
            size_t n;
            int lossy = 0;
            if (!decode_string(key, key_end, name, sizeof name, &n, &lossy) && !lossy
                && n == strlen(fields[i].name) && !memcmp(name, fields[i].name, n)) {
                fields[i].start = value;
                fields[i].end = j->p;
            }
        }
        skip_space(j);
        if (j->p < j->end && *j->p == ',') { j->p++; continue; }
        if (j->p < j->end && *j->p == close) { j->p++; return 0; }
        return fail(j, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int scan_value(struct scan *j, int depth) {
    skip_space(j);
    if (j->p >= j->end) return fail(j, "expected a value");
    switch (*j->p) {
    case '"': return scan_string(j);
    case '{': case '[': return scan_container(j, depth + 1, NULL, 0);
    case 't': return scan_word(j, "true");
    case 'f': return scan_word(j, "false");
    case 'n': return scan_word(j, "null");
    case 'N': return scan_word(j, "NaN");
    case 'I': return scan_word(j, "Infinity");
    default: return *j->p == '-' || is_digit(*j->p) ? scan_number(j) : fail(j, "expected a value");
    }
}

/* The document [s, s+n) is JSON: 0, with *is_object and the fields found; else -1 and j->error. */
static int scan_document(struct scan *j, struct field *fields, size_t nfields, int *is_object) {
    skip_space(j);
    *is_object = j->p < j->end && *j->p == '{';
    if (*is_object ? scan_container(j, 1, fields, nfields) : scan_value(j, 0)) return -1;
    skip_space(j);
    return j->p == j->end ? 0 : fail(j, "extra data after the value");
}

/* A checked JSON string token [s, end) decoded to UTF-8 into out (cap bytes): 0, or -1 if it
 * does not fit. A lone surrogate escape becomes U+FFFD and sets *lossy. */
static int decode_string(const unsigned char *s, const unsigned char *end, unsigned char *out, size_t cap,
                         size_t *len, int *lossy) {
    size_t n = 0;
    for (s++, end--; s < end;) {
        unsigned char tmp[4];
        size_t k = 1;
        uint32_t cp;
        if (*s != '\\') {
            k = *s >= 0x80 ? utf8_sequence(s, (size_t)(end - s)) : 1;
            if (k == 0) k = 1; /* cannot happen in a checked string; never loop on it */
            if (k > cap - n) return -1;
            memmove(out + n, s, k); /* out may be the string's own buffer, behind s */
            n += k;
            s += k;
            continue;
        }
        if (s[1] != 'u') {
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
            tmp[0] = (unsigned char)to[strchr(from, s[1]) - from];
            s += 2;
        } else {
            cp = (uint32_t)(hex_value(s[2]) << 12 | hex_value(s[3]) << 8 | hex_value(s[4]) << 4 | hex_value(s[5]));
            s += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF && end - s >= 6 && s[0] == '\\' && s[1] == 'u') {
                uint32_t low = (uint32_t)(hex_value(s[2]) << 12 | hex_value(s[3]) << 8 | hex_value(s[4]) << 4
                                          | hex_value(s[5]));
                if (low >= 0xDC00 && low <= 0xDFFF) { cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00); s += 6; }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF) { cp = 0xFFFD; *lossy = 1; }
            if (cp < 0x80) tmp[0] = (unsigned char)cp;
            else if (cp < 0x800) { tmp[0] = (unsigned char)(0xC0 | cp >> 6); k = 2; }
            else if (cp < 0x10000) { tmp[0] = (unsigned char)(0xE0 | cp >> 12); k = 3; }
            else { tmp[0] = (unsigned char)(0xF0 | cp >> 18); k = 4; }
            for (size_t i = 1; i < k; i++) tmp[i] = (unsigned char)(0x80 | (cp >> (6 * (k - 1 - i)) & 0x3F));
        }
        if (k > cap - n) return -1;
        memcpy(out + n, tmp, k);
        n += k;
    }
    *len = n;
    return 0;
}

/* --- the plugin ---------------------------------------------------------------------- */

static int emit(int code, const unsigned char *out, size_t n) {
    while (n) { /* a runtime that stopped reading gets nothing more; the exit code still tells */
        ssize_t w = write(1, out, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return code;
        out += w;
        n -= (size_t)w;
    }
    return code;
}

static int error_result(const char *version, int code, const char *msg, const char *details) {
    struct buf b = {.limit = 1 << 16};
    char number[16];
    puts_(&b, "{\"cniVersion\": ");
    put_json_string(&b, (const unsigned char *)version, strlen(version));
    snprintf(number, sizeof number, "%d", code);
    puts_(&b, ", \"code\": ");
    puts_(&b, number);
    puts_(&b, ", \"msg\": ");
    put_json_string(&b, (const unsigned char *)msg, strlen(msg));
    puts_(&b, ", \"details\": ");
    put_json_string(&b, (const unsigned char *)details, strlen(details));
    puts_(&b, "}\n");
    return b.nomem || b.over ? 1 : emit(1, b.data, b.len);
}

/* Time left until deadline as a socket timeout; 0 when it has passed. */
static int time_left(const struct timespec *deadline, struct timeval *tv) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long us = (deadline->tv_sec - now.tv_sec) * 1000000LL + (deadline->tv_nsec - now.tv_nsec) / 1000;
    tv->tv_sec = us / 1000000;
    tv->tv_usec = us % 1000000;
    return us > 0;
}

static int transfer(int fd, unsigned char *p, size_t n, int sending, const struct timespec *deadline,
                    const char **why) {
    while (n) {
        struct timeval tv;
        if (!time_left(deadline, &tv)) { *why = "timed out"; return -1; }
        setsockopt(fd, SOL_SOCKET, sending ? SO_SNDTIMEO : SO_RCVTIMEO, &tv, sizeof tv);
        ssize_t got = sending ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) { *why = errno == EAGAIN || errno == EWOULDBLOCK ? "timed out" : strerror(errno); return -1; }
        if (got == 0) { *why = "connection closed mid-message"; return -1; }
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

/* Send the request frame, receive the answer's body into *answer: NULL, or why not. */
static const char *ask_agent(const struct sockaddr_un *addr, struct buf *frame, unsigned char **answer,
                             size_t *answer_len) {
    const char *why = NULL;
    struct timeval connect_tv = {CONNECT_SECONDS, 0};
    struct timespec deadline;
    unsigned char header[4];
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return strerror(errno);
    /* A unix connect waits only while the agent's backlog is full: at most CONNECT_SECONDS. */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &connect_tv, sizeof connect_tv);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) < 0) {
        why = errno == EAGAIN || errno == EINPROGRESS ? "timed out" : strerror(errno);
        close(fd);
        return why;
    }
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += ANSWER_SECONDS;
    if (transfer(fd, frame->data, frame->len, 1, &deadline, &why) || transfer(fd, header, 4, 0, &deadline, &why)) {
        close(fd);
        return why;
    }
    size_t size = (size_t)header[0] << 24 | (size_t)header[1] << 16 | (size_t)header[2] << 8 | header[3];
    static char too_large[64];
    if (size > MAX_FRAME) {
        snprintf(too_large, sizeof too_large, "message of %zu bytes is too large", size);
        close(fd);
        return too_large;
    }
    *answer = malloc(size ? size : 1);
    if (!*answer) why = "out of memory";
    else transfer(fd, *answer, size, 0, &deadline, &why);
    *answer_len = size;
    close(fd);
    return why;
}

int main(void) {
    static unsigned char config[MAX_NETWORK_CONFIG_BYTES + 1]; /* +1: to see that it is over */
    static char msg[512], details[256];
    const char *command = getenv("CNI_COMMAND"), *version = LATEST_VERSION, *why;
    size_t n = 0;
    int read_errno = 0;
    signal(SIGPIPE, SIG_IGN); /* a closed pipe or socket is an error return, not death */

    while (n < sizeof config) { /* bounded: never more than the limit + 1 byte */
        ssize_t got = read(0, config + n, sizeof config - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) read_errno = errno;
        if (got <= 0) break;
        n += (size_t)got;
    }
    if (command && !strcmp(command, "VERSION"))
        return emit(0, (const unsigned char *)VERSION_ANSWER "\n", strlen(VERSION_ANSWER) + 1);
    if (read_errno) {
        snprintf(msg, sizeof msg, "cannot read the network config on stdin: %s", strerror(read_errno));
        return error_result(version, IO_FAILURE, msg, "");
    }
    if (n > MAX_NETWORK_CONFIG_BYTES) {
        /* Permanent, and told apart from "not JSON": the config may be well-formed, it is
         * just larger than any network config flock accepts. The agent is not asked. */
        snprintf(msg, sizeof msg, "network config on stdin is over %d bytes", MAX_NETWORK_CONFIG_BYTES);
        return error_result(version, INVALID_CONFIG, msg, "");
    }

    struct field fields[] = {{"socket", NULL, NULL}, {"cniVersion", NULL, NULL}};
    struct scan j = {config, config, config + n, NULL};
    int is_object, lossy = 0;
    if (scan_document(&j, fields, 2, &is_object)) {
        snprintf(details, sizeof details, "%s at byte %zu", j.error, (size_t)(j.p - j.begin));
        return error_result(version, DECODE_FAILURE, "network config on stdin is not JSON", details);
    }
    static unsigned char version_text[65];
    size_t len;
    lossy = 0;
    if (fields[1].end && *fields[1].start == '"'
        && !decode_string(fields[1].start, fields[1].end, version_text, sizeof version_text - 1, &len, &lossy)
        && !lossy && !memchr(version_text, 0, len)) {
        version_text[len] = 0;
        version = (const char *)version_text;
    }
    if (!is_object) return error_result(version, INVALID_CONFIG, "network config must be a JSON object", "");

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    const char *path = DEFAULT_SOCKET;
    if (fields[0].end) {
        lossy = 0;
        if (*fields[0].start != '"'
            || decode_string(fields[0].start, fields[0].end, (unsigned char *)addr.sun_path,
                             sizeof addr.sun_path - 1, &len, &lossy)
            || lossy || len == 0 || memchr(addr.sun_path, 0, len))
            return error_result(version, INVALID_CONFIG, "network config key 'socket' must be a path",
                                "a non-empty string of at most 107 bytes");
        path = addr.sun_path;
    } else {
        memcpy(addr.sun_path, DEFAULT_SOCKET, sizeof DEFAULT_SOCKET);
    }

    struct buf frame = {.limit = 4 + (size_t)MAX_FRAME};
    put(&frame, "\0\0\0\0{\"env\": {", 13);
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, "CNI_", 4) || !eq) continue;
        if (!first) put(&frame, ", ", 2);
        first = 0;
        put_json_string(&frame, (const unsigned char *)*e, (size_t)(eq - *e));
        put(&frame, ": ", 2);
        put_json_string(&frame, (const unsigned char *)eq + 1, strlen(eq + 1));
    }
    put(&frame, "}, \"stdin\": ", 12);
    put_json_string(&frame, config, n);
    put(&frame, "}", 1);
    if (frame.nomem) return error_result(version, IO_FAILURE, "out of memory", "");
    if (frame.over) {
        snprintf(msg, sizeof msg, "the CNI_* environment is over %d bytes", MAX_FRAME);
        return error_result(version, INVALID_ENV, msg, "");
    }
    size_t body = frame.len - 4;
    frame.data[0] = (unsigned char)(body >> 24);
    frame.data[1] = (unsigned char)(body >> 16);
    frame.data[2] = (unsigned char)(body >> 8);
    frame.data[3] = (unsigned char)body;

    unsigned char *answer = NULL;
    size_t answer_len = 0;
    struct field answer_fields[] = {{"exitCode", NULL, NULL}, {"stdout", NULL, NULL}};
    struct scan a = {NULL, NULL, NULL, NULL};
    why = ask_agent(&addr, &frame, &answer, &answer_len);
    if (!why) {
        a = (struct scan){answer, answer, answer + answer_len, NULL};
        if (scan_document(&a, answer_fields, 2, &is_object)) why = "the answer is not JSON";
        else if (!is_object) why = "message is not a JSON object";
    }
    if (why) {
        int status = command && !strcmp(command, "STATUS");
        snprintf(msg, sizeof msg, "flock-agent is not answering on %s: %s", path, why);
        return error_result(version, status ? PLUGIN_NOT_AVAILABLE : TRY_AGAIN_LATER, msg,
                            status ? "is the flock agent running on this node?"
                                   : "is the flock agent running on this node? the runtime will retry");
    }

    /* exitCode: an integer 0-255; stdout: a string. Anything else is a malformed answer. */
    long code = -1;
    const unsigned char *c = answer_fields[0].start;
    if (c && c < answer_fields[0].end) {
        int negative = *c == '-';
        code = 0;
        for (c += negative; c < answer_fields[0].end && code <= 255; c++)
            code = is_digit(*c) ? code * 10 + (*c - '0') : 1000;
        if (c == answer_fields[0].start + negative || (negative && code)) code = -1;
    }
    unsigned char *out = answer; /* decoded in place: never longer than its JSON form */
    lossy = 0; /* U+FFFD for a lone surrogate is fine in what is printed */
    if (code < 0 || code > 255 || !answer_fields[1].end || *answer_fields[1].start != '"'
        || decode_string(answer_fields[1].start, answer_fields[1].end, out, answer_len, &len, &lossy))
        return error_result(version, IO_FAILURE, "flock-agent sent a malformed answer", "");
    if (len && out[len - 1] != '\n') out[len++] = '\n'; /* room: the string's two quotes are gone */
    return emit((int)code, out, len);
}
