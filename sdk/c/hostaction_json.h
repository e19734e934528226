/*
 * hostaction_json: a small, bounded JSON parser and writer for hostaction
 * actions written in C. An action's params arrive as one JSON document; this
 * parses it into a tree with limits on size and nesting, so a hostile or
 * broken document fails with a message naming the byte offset instead of
 * exhausting the action's memory or stack. It also builds JSON text (facts
 * are often JSON) with correct escaping.
 *
 * Standalone: depends only on the C standard library.
 */
#ifndef HOSTACTION_JSON_H
#define HOSTACTION_JSON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits of one parse. Override by defining them before including this
 * header (in every file that includes it, and when compiling
 * hostaction_json.c). */
#ifndef HA_JSON_MAX_BYTES
/* Longest document accepted, in bytes. */
#define HA_JSON_MAX_BYTES (16u << 20)
#endif
#ifndef HA_JSON_MAX_DEPTH
/* Deepest nesting of arrays and objects (the parser recurses once per level). */
#define HA_JSON_MAX_DEPTH 64
#endif
#ifndef HA_JSON_MAX_VALUES
/* Most values (of any type, containers included) in one document. */
#define HA_JSON_MAX_VALUES (1u << 20)
#endif

typedef enum {
    HA_JSON_NULL,
    HA_JSON_BOOL,
    HA_JSON_NUMBER,
    HA_JSON_STRING,
    HA_JSON_ARRAY,
    HA_JSON_OBJECT,
} ha_json_type;

typedef struct ha_json ha_json;
typedef struct ha_json_member ha_json_member;

/* One JSON value. Strings are unescaped UTF-8, NUL-terminated, and may hold
 * NUL bytes of their own (from \u0000): `len` is their real length. A number
 * keeps its literal text, so integers are read exactly (see ha_json_u32). */
struct ha_json {
    ha_json_type type;
    union {
        bool boolean;
        struct {
            double value;
            const char *text; /* the literal, NUL-terminated */
        } number;
        struct {
            const char *ptr;
            size_t len;
        } string;
        struct {
            ha_json *items;
            size_t len;
        } array;
        struct {
            ha_json_member *members; /* in document order; keys are unique */
            size_t len;
        } object;
    } u;
};

struct ha_json_member {
    const char *key; /* unescaped, NUL-terminated */
    size_t key_len;
    ha_json value;
};

/* Why a parse failed: a message and the byte offset it refers to. */
typedef struct {
    size_t offset;
    char message[96];
} ha_json_error;

/* A parsed document: owns every value and string reachable from `root`. */
typedef struct ha_json_doc ha_json_doc;

/* Parses exactly one JSON value (RFC 8259) from `len` bytes of `text`,
 * surrounded by optional whitespace. Duplicate object keys, invalid UTF-8,
 * lone surrogates and documents over the limits above are errors. Returns
 * NULL and fills `err` on failure. */
ha_json_doc *ha_json_parse(const char *text, size_t len, ha_json_error *err);

/* The document's top-level value. */
const ha_json *ha_json_root(const ha_json_doc *doc);

/* Frees a document and everything in it (NULL is fine). */
void ha_json_free(ha_json_doc *doc);

/* The member `key` of an object, or NULL when absent or `obj` is not an
 * object. */
const ha_json *ha_json_get(const ha_json *obj, const char *key);

/* The JSON name of a type ("null", "boolean", "number", "string", "array",
 * "object"), for error messages. */
const char *ha_json_type_name(ha_json_type type);

/* Whether `value` is a number whose literal is an integer in [0, 2^32 - 1]
 * (no fraction, no exponent); stores it in `out`. */
bool ha_json_u32(const ha_json *value, uint32_t *out);

/* A growable, NUL-terminated byte buffer. Zero-initialize it
 * (`ha_buf b = {0};`). Running out of memory while growing it aborts the
 * run with a message on stderr: an action cannot go on without its output,
 * and a silently cut message would be worse. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} ha_buf;

void ha_buf_append(ha_buf *buf, const char *bytes, size_t len);
void ha_buf_puts(ha_buf *buf, const char *text);
void ha_buf_printf(ha_buf *buf, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
void ha_buf_vprintf(ha_buf *buf, const char *format, va_list args);
/* Appends `len` bytes, each invalid UTF-8 sequence replaced by U+FFFD, so
 * that the result can be passed where UTF-8 is required (a WIT string). */
void ha_buf_utf8_lossy(ha_buf *buf, const char *bytes, size_t len);
/* Appends `len` bytes as a JSON string literal, quotes included; invalid
 * UTF-8 is replaced by U+FFFD. */
void ha_buf_json_string(ha_buf *buf, const char *bytes, size_t len);
/* Appends `value` as compact JSON text. */
void ha_buf_json(ha_buf *buf, const ha_json *value);
/* Hands the bytes over, NUL-terminated even when empty (the caller frees
 * them), and empties the buffer. `len` may be NULL. */
char *ha_buf_take(ha_buf *buf, size_t *len);
void ha_buf_free(ha_buf *buf);

/*
 * Params: the JSON document an action's `run` receives. Each reader below
 * returns true on success; on failure it returns false and writes one line
 * naming the field to `err`, ready to be the run's error:
 * `invalid params: field "mode": expected an integer from 0 to 4294967295, got -1`.
 * `scope` names the object read from, for fields of nested objects: NULL
 * for the params themselves, "ops[2]" for an element (the field is then
 * named "ops[2].mode").
 */

/* Parses params and checks that they are a JSON object. On success `*doc`
 * owns the tree (free it with ha_json_free). */
bool ha_params_parse(const char *text, size_t len, ha_json_doc **doc, ha_buf *err);

/* Fails naming the first member of the object `obj` whose key is not in
 * `known` (NULL-terminated), so that a misspelt field is not silently
 * ignored. */
bool ha_params_only(const ha_json *obj, const char *scope, const char *const *known,
                    ha_buf *err);

/* Reads a string field. When absent (or null), `fallback` is used, or the
 * field is reported missing when `fallback` is NULL. A string holding a NUL
 * byte is refused: C APIs would see it cut short. `*out` points into the
 * document (or is `fallback`). */
bool ha_param_string(const ha_json *obj, const char *scope, const char *key,
                     const char *fallback, const char **out, ha_buf *err);

/* Reads an integer field in [0, 2^32 - 1]; `fallback` when absent (or
 * null), unless `required`. */
bool ha_param_u32(const ha_json *obj, const char *scope, const char *key, bool required,
                  uint32_t fallback, uint32_t *out, ha_buf *err);

/* Reads an array field; an empty array when absent (or null), unless
 * `required`. */
bool ha_param_array(const ha_json *obj, const char *scope, const char *key, bool required,
                    const ha_json **items, size_t *len, ha_buf *err);

/* Checks that `value` (the element `scope`, e.g. "ops[2]") is an object. */
bool ha_param_object(const ha_json *value, const char *scope, ha_buf *err);

#endif
