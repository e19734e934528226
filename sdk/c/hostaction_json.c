/*
 * hostaction_json: see hostaction_json.h. A recursive-descent parser over a
 * length-delimited buffer (no reads past `len`, no NUL terminator needed);
 * every value, string and literal lives in one arena that ha_json_free
 * releases at once.
 */
#include "hostaction_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---------------------------------------------------------------- */

typedef struct ha_block {
    struct ha_block *next;
    size_t used, cap;
    _Alignas(max_align_t) unsigned char data[];
} ha_block;

struct ha_json_doc {
    ha_json root;
    ha_block *blocks;
};

enum { HA_BLOCK_SIZE = 64 << 10 };

/* `size` bytes from the document's arena, aligned for any type; NULL when
 * out of memory. */
static void *arena_alloc(ha_json_doc *doc, size_t size) {
    size = (size + _Alignof(max_align_t) - 1) & ~(size_t)(_Alignof(max_align_t) - 1);
    ha_block *b = doc->blocks;
    if (b == NULL || b->cap - b->used < size) {
        size_t cap = size > HA_BLOCK_SIZE ? size : HA_BLOCK_SIZE;
        b = malloc(sizeof(ha_block) + cap);
        if (b == NULL) {
            return NULL;
        }
        b->used = 0;
        b->cap = cap;
        b->next = doc->blocks;
        doc->blocks = b;
    }
    void *p = b->data + b->used;
    b->used += size;
    return p;
}

/* ---- UTF-8 ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at `s` (at most `avail` bytes), or 0 if
 * it is invalid (overlong, a surrogate, past U+10FFFF, or cut short). */
static size_t utf8_seq_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    if (c < 0x80) {
        return 1;
    }
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) {
            lo = 0xA0;
        } else if (c == 0xED) {
            hi = 0x9F;
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F;
        }
    } else {
        return 0;
    }
    if (avail < n || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t i = 2; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            return 0;
        }
    }
    return n;
}

/* Writes code point `cp` as UTF-8 to `out`; returns the bytes written. */
static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- parser --------------------------------------------------------------- */

typedef struct {
    const unsigned char *start, *p, *end;
    size_t values;
    ha_json_doc *doc;
    ha_json_error *err;
} parser;

/* Records the first error at `at`; always returns false. */
static bool fail_at(parser *ps, const unsigned char *at, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail_at(parser *ps, const unsigned char *at, const char *format, ...) {
    ps->err->offset = (size_t)(at - ps->start);
    va_list args;
    va_start(args, format);
    vsnprintf(ps->err->message, sizeof ps->err->message, format, args);
    va_end(args);
    return false;
}

static bool out_of_memory(parser *ps) {
    return fail_at(ps, ps->p, "out of memory");
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) {
        ps->p++;
    }
}

/* Describes the byte at the cursor for an error message. */
static const char *what_is_here(parser *ps, char *scratch, size_t size) {
    if (ps->p >= ps->end) {
        return "the end of the input";
    }
    if (*ps->p >= 0x20 && *ps->p < 0x7F) {
        snprintf(scratch, size, "'%c'", *ps->p);
    } else {
        snprintf(scratch, size, "byte 0x%02X", *ps->p);
    }
    return scratch;
}

static bool expected(parser *ps, const char *what) {
    char scratch[16];
    return fail_at(ps, ps->p, "expected %s, found %s", what, what_is_here(ps, scratch, sizeof scratch));
}

static bool parse_value(parser *ps, ha_json *out, int depth);

static int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Reads the 4 hex digits after a `\u` at `at` (which points at the `\`)
 * in a string that ends at `end`. */
static bool read_hex4(parser *ps, const unsigned char *at, const unsigned char *end,
                      uint32_t *out) {
    uint32_t v = 0;
    for (int i = 2; i < 6; i++) {
        int d = at + i < end ? hex_digit(at[i]) : -1;
        if (d < 0) {
            return fail_at(ps, at, "\\u escape needs 4 hex digits");
        }
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return true;
}

/* Parses a string literal at the cursor (on its opening quote) into the
 * arena: unescaped, NUL-terminated. */
static bool parse_string(parser *ps, const char **out, size_t *out_len) {
    const unsigned char *open = ps->p;
    /* First find the closing quote: the unescaped text is never longer than
     * the literal, so one allocation of that size is enough. */
    const unsigned char *q = open + 1;
    while (q < ps->end && *q != '"') {
        q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    }
    if (q >= ps->end) {
        return fail_at(ps, open, "string not closed");
    }
    char *dst = arena_alloc(ps->doc, (size_t)(q - open));
    if (dst == NULL) {
        return out_of_memory(ps);
    }
    size_t n = 0;
    const unsigned char *s = open + 1;
    while (s < q) {
        unsigned char c = *s;
        if (c < 0x20) {
            return fail_at(ps, s, "control character 0x%02X in a string (escape it)", c);
        }
        if (c >= 0x80) {
            size_t len = utf8_seq_len(s, (size_t)(q - s));
            if (len == 0) {
                return fail_at(ps, s, "invalid UTF-8 in a string");
            }
            memcpy(dst + n, s, len);
            n += len;
            s += len;
            continue;
        }
        if (c != '\\') {
            dst[n++] = (char)c;
            s++;
            continue;
        }
        unsigned char e = s[1];
        const char *simple = NULL;
        switch (e) {
        case '"': simple = "\""; break;
        case '\\': simple = "\\"; break;
        case '/': simple = "/"; break;
        case 'b': simple = "\b"; break;
        case 'f': simple = "\f"; break;
        case 'n': simple = "\n"; break;
        case 'r': simple = "\r"; break;
        case 't': simple = "\t"; break;
        case 'u': break;
        default: return fail_at(ps, s, "invalid escape in a string");
        }
        if (simple != NULL) {
            dst[n++] = simple[0];
            s += 2;
            continue;
        }
        uint32_t cp;
        if (!read_hex4(ps, s, q, &cp)) {
            return false;
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return fail_at(ps, s, "lone low surrogate in a \\u escape");
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            /* A high surrogate must be followed by a \u low surrogate; the
             * pair (12 bytes) encodes as 4 bytes of UTF-8. */
            uint32_t low;
            if (q - s < 12 || s[6] != '\\' || s[7] != 'u' || !read_hex4(ps, s + 6, q, &low) ||
                low < 0xDC00 || low > 0xDFFF) {
                return fail_at(ps, s, "lone high surrogate in a \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            s += 6;
        }
        n += utf8_encode(cp, dst + n);
        s += 6;
    }
    dst[n] = '\0';
    *out = dst;
    *out_len = n;
    ps->p = q + 1;
    return true;
}

static bool is_digit(const unsigned char *p, const unsigned char *end) {
    return p < end && *p >= '0' && *p <= '9';
}

/* Parses a number literal per RFC 8259's grammar; keeps its text. */
static bool parse_number(parser *ps, ha_json *out) {
    const unsigned char *s = ps->p, *p = ps->p, *end = ps->end;
    if (p < end && *p == '-') {
        p++;
    }
    if (!is_digit(p, end)) {
        return fail_at(ps, s, "invalid number: a digit must follow '-'");
    }
    if (*p == '0') {
        p++;
        if (is_digit(p, end)) {
            return fail_at(ps, s, "invalid number: leading zero");
        }
    } else {
        while (is_digit(p, end)) {
            p++;
        }
    }
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end)) {
            return fail_at(ps, s, "invalid number: a digit must follow '.'");
        }
        while (is_digit(p, end)) {
            p++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }
        if (!is_digit(p, end)) {
            return fail_at(ps, s, "invalid number: a digit must follow the exponent");
        }
        while (is_digit(p, end)) {
            p++;
        }
    }
    size_t len = (size_t)(p - s);
    char *text = arena_alloc(ps->doc, len + 1);
    if (text == NULL) {
        return out_of_memory(ps);
    }
    memcpy(text, s, len);
    text[len] = '\0';
    out->type = HA_JSON_NUMBER;
    out->u.number.text = text;
    out->u.number.value = strtod(text, NULL);
    ps->p = p;
    return true;
}

/* Matches the keyword `word` at the cursor. */
static bool parse_keyword(parser *ps, const char *word) {
    size_t len = strlen(word);
    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len) != 0) {
        return expected(ps, "a value");
    }
    ps->p += len;
    return true;
}

/* A growable array of values (or members) while a container is parsed. */
typedef struct {
    void *items;
    size_t len, cap, size;
} vec;

static void *vec_push(vec *v) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        void *items = realloc(v->items, cap * v->size);
        if (items == NULL) {
            return NULL;
        }
        v->items = items;
        v->cap = cap;
    }
    return (char *)v->items + v->len++ * v->size;
}

/* Moves a finished vector into the arena (NULL for an empty one). */
static bool vec_finish(parser *ps, vec *v, void **out) {
    *out = NULL;
    if (v->len > 0) {
        *out = arena_alloc(ps->doc, v->len * v->size);
        if (*out == NULL) {
            free(v->items);
            return out_of_memory(ps);
        }
        memcpy(*out, v->items, v->len * v->size);
    }
    free(v->items);
    return true;
}

static bool parse_array(parser *ps, ha_json *out, int depth) {
    vec v = {.size = sizeof(ha_json)};
    ps->p++; /* '[' */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
    } else {
        for (;;) {
            ha_json *item = vec_push(&v);
            if (item == NULL) {
                free(v.items);
                return out_of_memory(ps);
            }
            if (!parse_value(ps, item, depth + 1)) {
                free(v.items);
                return false;
            }
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == ']') {
                ps->p++;
                break;
            }
            free(v.items);
            return expected(ps, "',' or ']' after an array item");
        }
    }
    out->type = HA_JSON_ARRAY;
    out->u.array.len = v.len;
    return vec_finish(ps, &v, (void **)&out->u.array.items);
}

static int compare_members(const void *a, const void *b) {
    const ha_json_member *x = *(const ha_json_member *const *)a;
    const ha_json_member *y = *(const ha_json_member *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c != 0) {
        return c;
    }
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* Refuses an object with two members of the same key (sorting pointers to
 * them keeps this O(n log n) for large objects). */
static bool check_unique_keys(parser *ps, const unsigned char *open, ha_json_member *members,
                              size_t len) {
    if (len < 2) {
        return true;
    }
    ha_json_member **sorted = malloc(len * sizeof *sorted);
    if (sorted == NULL) {
        return out_of_memory(ps);
    }
    for (size_t i = 0; i < len; i++) {
        sorted[i] = &members[i];
    }
    qsort(sorted, len, sizeof *sorted, compare_members);
    for (size_t i = 1; i < len; i++) {
        if (compare_members(&sorted[i - 1], &sorted[i]) == 0) {
            const char *key = sorted[i]->key;
            free(sorted);
            return fail_at(ps, open, "duplicate key \"%.40s\" in an object", key);
        }
    }
    free(sorted);
    return true;
}

static bool parse_object(parser *ps, ha_json *out, int depth) {
    const unsigned char *open = ps->p;
    vec v = {.size = sizeof(ha_json_member)};
    ps->p++; /* '{' */
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
    } else {
        for (;;) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') {
                free(v.items);
                return expected(ps, "a string key");
            }
            ha_json_member *m = vec_push(&v);
            if (m == NULL) {
                free(v.items);
                return out_of_memory(ps);
            }
            if (!parse_string(ps, &m->key, &m->key_len)) {
                free(v.items);
                return false;
            }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(v.items);
                return expected(ps, "':' after an object key");
            }
            ps->p++;
            if (!parse_value(ps, &m->value, depth + 1)) {
                free(v.items);
                return false;
            }
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == '}') {
                ps->p++;
                break;
            }
            free(v.items);
            return expected(ps, "',' or '}' after an object member");
        }
    }
    if (!check_unique_keys(ps, open, v.items, v.len)) {
        free(v.items);
        return false;
    }
    out->type = HA_JSON_OBJECT;
    out->u.object.len = v.len;
    return vec_finish(ps, &v, (void **)&out->u.object.members);
}

static bool parse_value(parser *ps, ha_json *out, int depth) {
    skip_ws(ps);
    if (depth > HA_JSON_MAX_DEPTH) {
        return fail_at(ps, ps->p, "nested deeper than %d arrays and objects", HA_JSON_MAX_DEPTH);
    }
    if (++ps->values > HA_JSON_MAX_VALUES) {
        return fail_at(ps, ps->p, "more than %u values", (unsigned)HA_JSON_MAX_VALUES);
    }
    if (ps->p >= ps->end) {
        return expected(ps, "a value");
    }
    switch (*ps->p) {
    case '{':
        return parse_object(ps, out, depth);
    case '[':
        return parse_array(ps, out, depth);
    case '"':
        out->type = HA_JSON_STRING;
        return parse_string(ps, &out->u.string.ptr, &out->u.string.len);
    case 't':
        out->type = HA_JSON_BOOL;
        out->u.boolean = true;
        return parse_keyword(ps, "true");
    case 'f':
        out->type = HA_JSON_BOOL;
        out->u.boolean = false;
        return parse_keyword(ps, "false");
    case 'n':
        out->type = HA_JSON_NULL;
        return parse_keyword(ps, "null");
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) {
            return parse_number(ps, out);
        }
        return expected(ps, "a value");
    }
}

ha_json_doc *ha_json_parse(const char *text, size_t len, ha_json_error *err) {
    err->offset = 0;
    err->message[0] = '\0';
    if (len > HA_JSON_MAX_BYTES) {
        snprintf(err->message, sizeof err->message, "document of %zu bytes is over the limit of %u",
                 len, (unsigned)HA_JSON_MAX_BYTES);
        return NULL;
    }
    ha_json_doc *doc = calloc(1, sizeof *doc);
    if (doc == NULL) {
        snprintf(err->message, sizeof err->message, "out of memory");
        return NULL;
    }
    const unsigned char *start = (const unsigned char *)text;
    parser ps = {.start = start, .p = start, .end = start + len, .doc = doc, .err = err};
    bool ok = parse_value(&ps, &doc->root, 1);
    if (ok) {
        skip_ws(&ps);
        if (ps.p < ps.end) {
            ok = fail_at(&ps, ps.p, "unexpected text after the value");
        }
    }
    if (!ok) {
        ha_json_free(doc);
        return NULL;
    }
    return doc;
}

const ha_json *ha_json_root(const ha_json_doc *doc) {
    return &doc->root;
}

void ha_json_free(ha_json_doc *doc) {
    if (doc == NULL) {
        return;
    }
    ha_block *b = doc->blocks;
    while (b != NULL) {
        ha_block *next = b->next;
        free(b);
        b = next;
    }
    free(doc);
}

const ha_json *ha_json_get(const ha_json *obj, const char *key) {
    if (obj == NULL || obj->type != HA_JSON_OBJECT) {
        return NULL;
    }
    size_t len = strlen(key);
    for (size_t i = 0; i < obj->u.object.len; i++) {
        const ha_json_member *m = &obj->u.object.members[i];
        if (m->key_len == len && memcmp(m->key, key, len) == 0) {
            return &m->value;
        }
    }
    return NULL;
}

const char *ha_json_type_name(ha_json_type type) {
    switch (type) {
    case HA_JSON_NULL: return "null";
    case HA_JSON_BOOL: return "boolean";
    case HA_JSON_NUMBER: return "number";
    case HA_JSON_STRING: return "string";
    case HA_JSON_ARRAY: return "array";
    case HA_JSON_OBJECT: return "object";
    }
    return "unknown";
}

bool ha_json_u32(const ha_json *value, uint32_t *out) {
    if (value == NULL || value->type != HA_JSON_NUMBER) {
        return false;
    }
    const char *t = value->u.number.text;
    uint64_t n = 0;
    if (*t == '\0') {
        return false;
    }
    for (; *t; t++) {
        if (*t < '0' || *t > '9') {
            return false; /* a sign, a fraction or an exponent */
        }
        n = n * 10 + (uint64_t)(*t - '0');
        if (n > UINT32_MAX) {
            return false;
        }
    }
    *out = (uint32_t)n;
    return true;
}

/* ---- buffer --------------------------------------------------------------- */

/* Makes room for `more` bytes plus the terminator, or aborts. */
static void buf_reserve(ha_buf *buf, size_t more) {
    if (more >= SIZE_MAX / 2 - buf->len) {
        fprintf(stderr, "hostaction_json: a buffer of %zu bytes cannot grow by %zu\n", buf->len, more);
        abort();
    }
    size_t need = buf->len + more + 1;
    if (need <= buf->cap) {
        return;
    }
    size_t cap = buf->cap ? buf->cap : 64;
    while (cap < need) {
        cap *= 2;
    }
    char *ptr = realloc(buf->ptr, cap);
    if (ptr == NULL) {
        fprintf(stderr, "hostaction_json: out of memory growing a buffer to %zu bytes\n", cap);
        abort();
    }
    buf->ptr = ptr;
    buf->cap = cap;
}

void ha_buf_append(ha_buf *buf, const char *bytes, size_t len) {
    buf_reserve(buf, len);
    if (len > 0) {
        memcpy(buf->ptr + buf->len, bytes, len);
    }
    buf->len += len;
    buf->ptr[buf->len] = '\0';
}

void ha_buf_puts(ha_buf *buf, const char *text) {
    ha_buf_append(buf, text, strlen(text));
}

void ha_buf_vprintf(ha_buf *buf, const char *format, va_list args) {
    va_list copy;
    va_copy(copy, args);
    int n = vsnprintf(NULL, 0, format, copy);
    va_end(copy);
    if (n < 0) {
        fprintf(stderr, "hostaction_json: bad format string \"%s\"\n", format);
        abort();
    }
    buf_reserve(buf, (size_t)n);
    vsnprintf(buf->ptr + buf->len, (size_t)n + 1, format, args);
    buf->len += (size_t)n;
}

void ha_buf_printf(ha_buf *buf, const char *format, ...) {
    va_list args;
    va_start(args, format);
    ha_buf_vprintf(buf, format, args);
    va_end(args);
}

void ha_buf_utf8_lossy(ha_buf *buf, const char *bytes, size_t len) {
    const unsigned char *s = (const unsigned char *)bytes, *end = s + len;
    while (s < end) {
        /* Copy the longest valid run at once. */
        const unsigned char *run = s;
        size_t n;
        while (s < end && (n = utf8_seq_len(s, (size_t)(end - s))) != 0) {
            s += n;
        }
        ha_buf_append(buf, (const char *)run, (size_t)(s - run));
        if (s < end) {
            ha_buf_append(buf, "\xEF\xBF\xBD", 3); /* U+FFFD */
            s++;
        }
    }
}

void ha_buf_json_string(ha_buf *buf, const char *bytes, size_t len) {
    const unsigned char *s = (const unsigned char *)bytes, *end = s + len;
    ha_buf_append(buf, "\"", 1);
    while (s < end) {
        unsigned char c = *s;
        if (c >= 0x80) {
            size_t n = utf8_seq_len(s, (size_t)(end - s));
            if (n == 0) {
                ha_buf_append(buf, "\xEF\xBF\xBD", 3);
                s++;
            } else {
                ha_buf_append(buf, (const char *)s, n);
                s += n;
            }
            continue;
        }
        switch (c) {
        case '"': ha_buf_append(buf, "\\\"", 2); break;
        case '\\': ha_buf_append(buf, "\\\\", 2); break;
        case '\n': ha_buf_append(buf, "\\n", 2); break;
        case '\r': ha_buf_append(buf, "\\r", 2); break;
        case '\t': ha_buf_append(buf, "\\t", 2); break;
        default:
            if (c < 0x20 || c == 0x7F) {
                ha_buf_printf(buf, "\\u%04x", c);
            } else {
                ha_buf_append(buf, (const char *)s, 1);
            }
        }
        s++;
    }
    ha_buf_append(buf, "\"", 1);
}

void ha_buf_json(ha_buf *buf, const ha_json *value) {
    switch (value->type) {
    case HA_JSON_NULL:
        ha_buf_puts(buf, "null");
        break;
    case HA_JSON_BOOL:
        ha_buf_puts(buf, value->u.boolean ? "true" : "false");
        break;
    case HA_JSON_NUMBER:
        ha_buf_puts(buf, value->u.number.text);
        break;
    case HA_JSON_STRING:
        ha_buf_json_string(buf, value->u.string.ptr, value->u.string.len);
        break;
    case HA_JSON_ARRAY:
        ha_buf_append(buf, "[", 1);
        for (size_t i = 0; i < value->u.array.len; i++) {
            if (i > 0) {
                ha_buf_append(buf, ",", 1);
            }
            ha_buf_json(buf, &value->u.array.items[i]);
        }
        ha_buf_append(buf, "]", 1);
        break;
    case HA_JSON_OBJECT:
        ha_buf_append(buf, "{", 1);
        for (size_t i = 0; i < value->u.object.len; i++) {
            const ha_json_member *m = &value->u.object.members[i];
            if (i > 0) {
                ha_buf_append(buf, ",", 1);
            }
            ha_buf_json_string(buf, m->key, m->key_len);
            ha_buf_append(buf, ":", 1);
            ha_buf_json(buf, &m->value);
        }
        ha_buf_append(buf, "}", 1);
        break;
    }
}

char *ha_buf_take(ha_buf *buf, size_t *len) {
    ha_buf_append(buf, "", 0); /* an empty buffer still hands over "" */
    char *ptr = buf->ptr;
    if (len != NULL) {
        *len = buf->len;
    }
    *buf = (ha_buf){0};
    return ptr;
}

void ha_buf_free(ha_buf *buf) {
    free(buf->ptr);
    *buf = (ha_buf){0};
}

/* ---- params --------------------------------------------------------------- */

/* Describes a value for an error message: its type, and the text of a
 * scalar (shortened). */
static void describe(ha_buf *err, const ha_json *value) {
    switch (value->type) {
    case HA_JSON_NUMBER:
        ha_buf_printf(err, "%.40s", value->u.number.text);
        break;
    case HA_JSON_BOOL:
        ha_buf_puts(err, value->u.boolean ? "true" : "false");
        break;
    case HA_JSON_STRING:
        ha_buf_puts(err, "a string");
        break;
    case HA_JSON_NULL:
        ha_buf_puts(err, "null");
        break;
    case HA_JSON_ARRAY:
    case HA_JSON_OBJECT:
        ha_buf_printf(err, "an %s", ha_json_type_name(value->type));
        break;
    }
}

bool ha_params_parse(const char *text, size_t len, ha_json_doc **doc, ha_buf *err) {
    ha_json_error e;
    *doc = ha_json_parse(text, len, &e);
    if (*doc == NULL) {
        ha_buf_printf(err, "invalid params: not JSON: %s at byte %zu", e.message, e.offset);
        return false;
    }
    const ha_json *root = ha_json_root(*doc);
    if (root->type != HA_JSON_OBJECT) {
        ha_buf_puts(err, "invalid params: expected a JSON object, got ");
        describe(err, root);
        ha_json_free(*doc);
        *doc = NULL;
        return false;
    }
    return true;
}

/* Appends the name of field `key` of the object `scope`, quoted. */
static void field_name(ha_buf *err, const char *scope, const char *key, size_t key_len) {
    ha_buf name = {0};
    if (scope != NULL) {
        ha_buf_printf(&name, "%s.", scope);
    }
    ha_buf_append(&name, key, key_len);
    ha_buf_json_string(err, name.ptr, name.len);
    ha_buf_free(&name);
}

bool ha_params_only(const ha_json *obj, const char *scope, const char *const *known,
                    ha_buf *err) {
    for (size_t i = 0; i < obj->u.object.len; i++) {
        const ha_json_member *m = &obj->u.object.members[i];
        bool found = false;
        for (const char *const *k = known; *k != NULL && !found; k++) {
            found = strlen(*k) == m->key_len && memcmp(*k, m->key, m->key_len) == 0;
        }
        if (!found) {
            ha_buf_puts(err, "invalid params: unknown field ");
            field_name(err, scope, m->key, m->key_len);
            ha_buf_puts(err, ", expected one of");
            for (const char *const *k = known; *k != NULL; k++) {
                ha_buf_printf(err, "%s \"%s\"", k == known ? "" : ",", *k);
            }
            return false;
        }
    }
    return true;
}

/* The field `key` of `obj`, NULL when absent or null. */
static const ha_json *field(const ha_json *obj, const char *key) {
    const ha_json *v = ha_json_get(obj, key);
    return v != NULL && v->type == HA_JSON_NULL ? NULL : v;
}

static bool missing(const char *scope, const char *key, ha_buf *err) {
    ha_buf_puts(err, "invalid params: missing field ");
    field_name(err, scope, key, strlen(key));
    return false;
}

static bool wrong(const char *scope, const char *key, const char *want, const ha_json *got,
                  ha_buf *err) {
    ha_buf_puts(err, "invalid params: field ");
    field_name(err, scope, key, strlen(key));
    ha_buf_printf(err, ": expected %s, got ", want);
    describe(err, got);
    return false;
}

bool ha_param_string(const ha_json *obj, const char *scope, const char *key,
                     const char *fallback, const char **out, ha_buf *err) {
    const ha_json *v = field(obj, key);
    if (v == NULL) {
        if (fallback == NULL) {
            return missing(scope, key, err);
        }
        *out = fallback;
        return true;
    }
    if (v->type != HA_JSON_STRING) {
        return wrong(scope, key, "a string", v, err);
    }
    if (strlen(v->u.string.ptr) != v->u.string.len) {
        ha_buf_puts(err, "invalid params: field ");
        field_name(err, scope, key, strlen(key));
        ha_buf_puts(err, ": holds a NUL character");
        return false;
    }
    *out = v->u.string.ptr;
    return true;
}

bool ha_param_u32(const ha_json *obj, const char *scope, const char *key, bool required,
                  uint32_t fallback, uint32_t *out, ha_buf *err) {
    const ha_json *v = field(obj, key);
    if (v == NULL) {
        if (required) {
            return missing(scope, key, err);
        }
        *out = fallback;
        return true;
    }
    if (!ha_json_u32(v, out)) {
        return wrong(scope, key, "an integer from 0 to 4294967295", v, err);
    }
    return true;
}

bool ha_param_array(const ha_json *obj, const char *scope, const char *key, bool required,
                    const ha_json **items, size_t *len, ha_buf *err) {
    const ha_json *v = field(obj, key);
    if (v == NULL) {
        if (required) {
            return missing(scope, key, err);
        }
        *items = NULL;
        *len = 0;
        return true;
    }
    if (v->type != HA_JSON_ARRAY) {
        return wrong(scope, key, "an array", v, err);
    }
    *items = v->u.array.items;
    *len = v->u.array.len;
    return true;
}

bool ha_param_object(const ha_json *value, const char *scope, ha_buf *err) {
    if (value->type == HA_JSON_OBJECT) {
        return true;
    }
    ha_buf_printf(err, "invalid params: %s: expected an object, got ", scope);
    describe(err, value);
    return false;
}
