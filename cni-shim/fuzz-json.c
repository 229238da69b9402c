/* An in-process fuzzer for flock-cni's JSON reading and writing (not shipped):
 *
 *     make -C cni-shim fuzz          # a sanitized build, then 2 minutes of it
 *
 * Random mutations of a few network configs (bytes flipped, inserted, removed, copied;
 * JSON fragments that matter: quotes, escapes, surrogates, brackets) go through the checker
 * (scan_document) and, when it accepts them, through decode_string; random bytes go through
 * put_json_string and back. Built with AddressSanitizer and UBSan, any out-of-bounds access or
 * undefined behaviour stops it; the properties below stop it with a message.
 */
#define main flock_cni_main
#include "flock-cni.c"
#undef main

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static size_t below(size_t n) { return n ? (size_t)(next() % n) : 0; }

static const char *const seeds[] = {
    "{\"cniVersion\": \"1.1.0\", \"name\": \"flock\", \"type\": \"flock\", \"socket\": \"/run/flock/cni.sock\"}",
    "{\"cniVersion\":\"1.0.0\",\"socket\":\"\\/run\\/x\\u00e9\\ud83d\\ude00\",\"prevResult\":{\"ips\":[{\"a\":1e5},"
    "-0.5E-3,true,false,null,NaN,-Infinity]},\"cni.dev/valid-attachments\":[{\"containerID\":\"a\",\"ifname\":\"b\"}]}",
    "[[[[{\"socket\": \"\\ud800\", \"s\\u006fcket\": \"x\"}]]]]",
    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
};
static const char *const pieces[] = {"\"", "\\", "\\u", "\\ud800", "\\udc00", "\\u0000", "{", "}", "[", "]",
                                     ":", ",", "\xc3\xa9", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xff", "-",
                                     "1e", "0.", "NaN", "Infinity", "\"socket\"", "\"cniVersion\"", " "};

#define MAX_INPUT 4096
static unsigned long accepted, decoded;

static void check(const unsigned char *data, size_t n) {
    struct field fields[] = {{"socket", NULL, NULL}, {"cniVersion", NULL, NULL}};
    struct scan j = {data, data, data + n, NULL};
    int is_object;
    if (scan_document(&j, fields, 2, &is_object)) {
        if (!j.error || j.p < data || j.p > data + n) { fprintf(stderr, "bad failure state\n"); abort(); }
        return;
    }
    accepted++;
    for (size_t i = 0; i < 2; i++) {
        if (!fields[i].end) continue;
        if (fields[i].start < data || fields[i].end > data + n || fields[i].start >= fields[i].end) abort();
        if (*fields[i].start != '"') continue;
        size_t cap = (size_t)(fields[i].end - fields[i].start), len = 0;
        unsigned char *out = malloc(cap);
        int lossy = 0;
        if (!out || decode_string(fields[i].start, fields[i].end, out, cap, &len, &lossy)) {
            fprintf(stderr, "a checked string did not decode into its own length\n");
            abort();
        }
        if (len > cap - 2) { fprintf(stderr, "decoded longer than its JSON form\n"); abort(); }
        decoded++;
        unsigned char small[8]; /* and into a buffer too small: refused, never overrun */
        decode_string(fields[i].start, fields[i].end, small, sizeof small, &len, &lossy);
        free(out);
    }
}

static void round_trip(const unsigned char *data, size_t n) {
    struct buf b = {.limit = 16 * MAX_INPUT};
    put_json_string(&b, data, n);
    if (b.over || b.nomem) abort();
    struct scan j = {b.data, b.data, b.data + b.len, NULL};
    struct field none[1];
    int is_object;
    if (scan_document(&j, none, 0, &is_object) || is_object) { fprintf(stderr, "encoded bytes are not a JSON string\n"); abort(); }
    unsigned char *out = malloc(b.len);
    size_t len = 0;
    int lossy = 0;
    if (!out || decode_string(b.data, b.data + b.len, out, b.len, &len, &lossy)) abort();
    int utf8 = 1;
    for (size_t i = 0; i < n;) {
        size_t k = data[i] >= 0x80 ? utf8_sequence(data + i, n - i) : 1;
        if (!k) { utf8 = 0; break; }
        i += k;
    }
    if (utf8 && (lossy || len != n || memcmp(out, data, n))) { fprintf(stderr, "UTF-8 did not survive a round trip\n"); abort(); }
    if (!utf8 && !lossy) { fprintf(stderr, "a stray byte was not escaped as a lone surrogate\n"); abort(); }
    free(out);
    free(b.data);
}

int main(int argc, char **argv) {
    static unsigned char input[MAX_INPUT];
    long seconds = argc > 1 ? atol(argv[1]) : 120;
    time_t until = time(NULL) + seconds;
    unsigned long runs = 0;
    size_t n = 0;
    while (time(NULL) < until) {
        for (int batch = 0; batch < 10000; batch++, runs++) {
            if (below(8) == 0 || n == 0) { /* start again from a seed */
                const char *seed = seeds[below(sizeof seeds / sizeof *seeds)];
                n = strlen(seed);
                memcpy(input, seed, n);
            }
            for (size_t m = 1 + below(4); m > 0; m--) {
                size_t at = below(n + 1), len;
                switch (below(5)) {
                case 0: if (n) input[below(n)] = (unsigned char)next(); break;
                case 1: if (n < MAX_INPUT) { memmove(input + at + 1, input + at, n - at); input[at] = (unsigned char)next(); n++; } break;
                case 2: if (at < n) { len = 1 + below(n - at); memmove(input + at, input + at + len, n - at - len); n -= len; } break;
                case 3: { const char *p = pieces[below(sizeof pieces / sizeof *pieces)]; len = strlen(p);
                          if (n + len <= MAX_INPUT) { memmove(input + at + len, input + at, n - at); memcpy(input + at, p, len); n += len; } } break;
                default: if (n && n < MAX_INPUT / 2) { size_t from = below(n); len = 1 + below(n - from);
                          memmove(input + at + len, input + at, n - at); memmove(input + at, input + from + (from >= at ? len : 0), len); n += len; } break;
                }
            }
            /* Each input also exactly sized, so that reading one byte past it is caught. */
            unsigned char *copy = malloc(n ? n : 1);
            memcpy(copy, input, n);
            check(copy, n);
            round_trip(copy, n);
            free(copy);
        }
    }
    printf("fuzz-json: %lu inputs in %ld s (%lu of them JSON, %lu strings decoded), no failure\n", runs, seconds,
           accepted, decoded);
    return 0;
}
