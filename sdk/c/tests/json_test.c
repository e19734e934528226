/*
 * Unit tests of hostaction_json, compiled for the build machine and run by
 * tests/tests/all/c.rs (`cc -fsanitize=address,undefined`): every parse error
 * names its byte offset, the limits hold, strings unescape exactly, and the
 * writer escapes what JSON needs. Prints "N passed, N failed".
 */
#include "../hostaction_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (cond) {                                                            \
            passed++;                                                          \
        } else {                                                               \
            failed++;                                                          \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
        }                                                                      \
    } while (0)

/* Parses `text`; returns the document or NULL with the error in `err`. */
static ha_json_doc *parse(const char *text, ha_json_error *err) {
    return ha_json_parse(text, strlen(text), err);
}

/* Checks that `text` fails at byte `offset` with a message containing `needle`. */
static void check_error(const char *text, size_t offset, const char *needle) {
    ha_json_error err;
    ha_json_doc *doc = parse(text, &err);
    CHECK(doc == NULL);
    if (doc != NULL) {
        fprintf(stderr, "  parsed: %s\n", text);
        ha_json_free(doc);
        return;
    }
    if (err.offset != offset || strstr(err.message, needle) == NULL) {
        failed++;
        fprintf(stderr, "  %s: got \"%s\" at %zu, want \"%s\" at %zu\n", text, err.message,
                err.offset, needle, offset);
    } else {
        passed++;
    }
}

/* Checks that `text` re-serializes to `want`. */
static void check_roundtrip(const char *text, const char *want) {
    ha_json_error err;
    ha_json_doc *doc = parse(text, &err);
    CHECK(doc != NULL);
    if (doc == NULL) {
        fprintf(stderr, "  %s: %s at %zu\n", text, err.message, err.offset);
        return;
    }
    ha_buf out = {0};
    ha_buf_json(&out, ha_json_root(doc));
    if (strcmp(out.ptr, want) != 0) {
        failed++;
        fprintf(stderr, "  %s: wrote %s, want %s\n", text, out.ptr, want);
    } else {
        passed++;
    }
    ha_buf_free(&out);
    ha_json_free(doc);
}

static void test_values(void) {
    ha_json_error err;
    ha_json_doc *doc = parse(" {\"a\": [1, -2.5e3, true, false, null], \"b\": \"x\\u00e9\\ud83d\\ude00\\n\\u0000y\"} ", &err);
    CHECK(doc != NULL);
    const ha_json *root = ha_json_root(doc);
    CHECK(root->type == HA_JSON_OBJECT && root->u.object.len == 2);
    const ha_json *a = ha_json_get(root, "a");
    CHECK(a != NULL && a->type == HA_JSON_ARRAY && a->u.array.len == 5);
    CHECK(a->u.array.items[1].u.number.value == -2500.0);
    CHECK(a->u.array.items[2].type == HA_JSON_BOOL && a->u.array.items[2].u.boolean);
    CHECK(a->u.array.items[4].type == HA_JSON_NULL);
    const ha_json *b = ha_json_get(root, "b");
    CHECK(b != NULL && b->type == HA_JSON_STRING);
    CHECK(b->u.string.len == 10 && memcmp(b->u.string.ptr, "x\xC3\xA9\xF0\x9F\x98\x80\n\0y", 10) == 0);
    CHECK(ha_json_get(root, "c") == NULL);
    CHECK(ha_json_get(a, "a") == NULL);
    ha_json_free(doc);

    uint32_t n = 0;
    doc = parse("[420, 4294967295, 4294967296, -1, 1.0, 1e2, 0]", &err);
    const ha_json *items = ha_json_root(doc)->u.array.items;
    CHECK(ha_json_u32(&items[0], &n) && n == 420);
    CHECK(ha_json_u32(&items[1], &n) && n == 4294967295u);
    CHECK(!ha_json_u32(&items[2], &n));
    CHECK(!ha_json_u32(&items[3], &n));
    CHECK(!ha_json_u32(&items[4], &n));
    CHECK(!ha_json_u32(&items[5], &n));
    CHECK(ha_json_u32(&items[6], &n) && n == 0);
    ha_json_free(doc);
}

static void test_errors(void) {
    check_error("", 0, "expected a value, found the end of the input");
    check_error("  ", 2, "expected a value");
    check_error("{\"a\" 1}", 5, "expected ':' after an object key, found '1'");
    check_error("{\"a\": 1,}", 8, "expected a string key, found '}'");
    check_error("[1 2]", 3, "expected ',' or ']' after an array item, found '2'");
    check_error("[1,]", 3, "expected a value, found ']'");
    check_error("{\"a\": 1} x", 9, "unexpected text after the value");
    check_error("\"abc", 0, "string not closed");
    check_error("\"a\\qb\"", 2, "invalid escape");
    check_error("\"a\tb\"", 2, "control character 0x09");
    check_error("\"\\u12\"", 1, "\\u escape needs 4 hex digits");
    check_error("\"\\ud800\"", 1, "lone high surrogate");
    check_error("\"\\ud800\\u0041\"", 1, "lone high surrogate");
    check_error("\"\\udc00\"", 1, "lone low surrogate");
    check_error("\"\xC3\"", 1, "invalid UTF-8");
    check_error("\"\xED\xA0\x80\"", 1, "invalid UTF-8"); /* an encoded surrogate */
    check_error("\"\xC0\xAF\"", 1, "invalid UTF-8");     /* overlong */
    check_error("01", 0, "leading zero");
    check_error("-", 0, "a digit must follow '-'");
    check_error("1.", 0, "a digit must follow '.'");
    check_error("1e+", 0, "a digit must follow the exponent");
    check_error("tru", 0, "expected a value");
    check_error("nul", 0, "expected a value");
    check_error("\xEF\xBB\xBF{}", 0, "byte 0xEF"); /* a BOM is not JSON */
    check_error("{\"a\": 1, \"b\": 2, \"a\": 3}", 0, "duplicate key \"a\"");

    /* Nesting: HA_JSON_MAX_DEPTH levels parse, one more does not. */
    char deep[2 * HA_JSON_MAX_DEPTH + 3];
    memset(deep, '[', HA_JSON_MAX_DEPTH);
    memset(deep + HA_JSON_MAX_DEPTH, ']', HA_JSON_MAX_DEPTH);
    deep[2 * HA_JSON_MAX_DEPTH] = '\0';
    ha_json_error err;
    ha_json_doc *doc = parse(deep, &err);
    CHECK(doc != NULL);
    ha_json_free(doc);
    memset(deep, '[', HA_JSON_MAX_DEPTH + 1);
    memset(deep + HA_JSON_MAX_DEPTH + 1, ']', HA_JSON_MAX_DEPTH + 1);
    deep[2 * HA_JSON_MAX_DEPTH + 2] = '\0';
    check_error(deep, HA_JSON_MAX_DEPTH, "nested deeper than 64");

    /* Size: over HA_JSON_MAX_BYTES is refused before parsing. */
    doc = ha_json_parse("0", (size_t)HA_JSON_MAX_BYTES + 1, &err);
    CHECK(doc == NULL && strstr(err.message, "over the limit") != NULL);

    /* Values: a flat array of HA_JSON_MAX_VALUES zeros is one too many. */
    size_t count = HA_JSON_MAX_VALUES;
    char *many = malloc(2 * count + 2);
    many[0] = '[';
    for (size_t i = 0; i < count; i++) {
        many[1 + 2 * i] = '0';
        many[2 + 2 * i] = i + 1 < count ? ',' : ']';
    }
    doc = ha_json_parse(many, 2 * count + 1, &err);
    CHECK(doc == NULL && strstr(err.message, "more than 1048576 values") != NULL);
    /* One fewer fits, and a large object's keys are checked for duplicates. */
    many[2 * count - 2] = ']';
    doc = ha_json_parse(many, 2 * count - 1, &err);
    CHECK(doc != NULL && ha_json_root(doc)->u.array.len == count - 1);
    ha_json_free(doc);
    free(many);
}

static void test_writer(void) {
    check_roundtrip(" { \"k\" : [ 1.50 , \"a\\\"b\\\\c\\/\" , { } , [ ] ] } ",
                    "{\"k\":[1.50,\"a\\\"b\\\\c/\",{},[]]}");
    check_roundtrip("\"\\u0001\\b\\f\\n\\r\\t\\u007f\\u00e9\"",
                    "\"\\u0001\\u0008\\u000c\\n\\r\\t\\u007f\xC3\xA9\"");

    ha_buf b = {0};
    ha_buf_json_string(&b, "a\xFF" "b", 3);
    CHECK(strcmp(b.ptr, "\"a\xEF\xBF\xBD" "b\"") == 0);
    ha_buf_free(&b);
    ha_buf_utf8_lossy(&b, "ok\xC3\xA9\xE2\x82", 6);
    CHECK(strcmp(b.ptr, "ok\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD") == 0);
    ha_buf_free(&b);
    ha_buf_printf(&b, "%s=%d", "n", 42);
    ha_buf_printf(&b, ";%0300d", 1);
    size_t len;
    char *s = ha_buf_take(&b, &len);
    CHECK(len == 4 + 301 && strncmp(s, "n=42;000", 8) == 0 && s[len] == '\0');
    CHECK(b.ptr == NULL && b.len == 0);
    free(s);
}

static void test_params(void) {
    static const char *const known[] = {"path", "mode", "ops", NULL};
    struct {
        const char *text;
        const char *error; /* NULL: valid */
    } cases[] = {
        {"{\"path\": \"/x\", \"mode\": 420}", NULL},
        {"[]", "invalid params: expected a JSON object, got an array"},
        {"{\"path\": 1", "invalid params: not JSON: expected ',' or '}' after an object member, found the end of the input at byte 10"},
        {"{\"pathh\": \"/x\"}", "invalid params: unknown field \"pathh\", expected one of \"path\", \"mode\", \"ops\""},
        {"{}", "invalid params: missing field \"path\""},
        {"{\"path\": null}", "invalid params: missing field \"path\""},
        {"{\"path\": 7}", "invalid params: field \"path\": expected a string, got 7"},
        {"{\"path\": \"a\\u0000b\"}", "invalid params: field \"path\": holds a NUL character"},
        {"{\"path\": \"/x\", \"mode\": -1}", "invalid params: field \"mode\": expected an integer from 0 to 4294967295, got -1"},
        {"{\"path\": \"/x\", \"mode\": \"420\"}", "invalid params: field \"mode\": expected an integer from 0 to 4294967295, got a string"},
        {"{\"path\": \"/x\", \"ops\": {}}", "invalid params: field \"ops\": expected an array, got an object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ha_buf err = {0};
        ha_json_doc *doc = NULL;
        const char *path = NULL;
        uint32_t mode = 0;
        const ha_json *ops = NULL;
        size_t n_ops = 0;
        bool ok = ha_params_parse(cases[i].text, strlen(cases[i].text), &doc, &err) &&
                  ha_params_only(ha_json_root(doc), NULL, known, &err) &&
                  ha_param_string(ha_json_root(doc), NULL, "path", NULL, &path, &err) &&
                  ha_param_u32(ha_json_root(doc), NULL, "mode", false, 0644, &mode, &err) &&
                  ha_param_array(ha_json_root(doc), NULL, "ops", false, &ops, &n_ops, &err);
        if (cases[i].error == NULL) {
            CHECK(ok && strcmp(path, "/x") == 0 && mode == 420 && n_ops == 0);
        } else if (ok || strcmp(err.ptr, cases[i].error) != 0) {
            failed++;
            fprintf(stderr, "  %s: got \"%s\", want \"%s\"\n", cases[i].text,
                    ok ? "(ok)" : err.ptr, cases[i].error);
        } else {
            passed++;
        }
        ha_buf_free(&err);
        ha_json_free(doc);
    }

    /* Fields of nested objects are named by their scope. */
    const char *text = "{\"ops\": [{\"op\": \"x\"}, 3, {\"opp\": 1}]}";
    ha_json_doc *doc = NULL;
    ha_buf err = {0};
    CHECK(ha_params_parse(text, strlen(text), &doc, &err));
    const ha_json *ops = NULL;
    size_t n = 0;
    CHECK(ha_param_array(ha_json_root(doc), NULL, "ops", true, &ops, &n, &err) && n == 3);
    uint32_t mode;
    CHECK(!ha_param_u32(&ops[0], "ops[0]", "mode", true, 0, &mode, &err));
    CHECK(strcmp(err.ptr, "invalid params: missing field \"ops[0].mode\"") == 0);
    ha_buf_free(&err);
    CHECK(!ha_param_object(&ops[1], "ops[1]", &err));
    CHECK(strcmp(err.ptr, "invalid params: ops[1]: expected an object, got 3") == 0);
    ha_buf_free(&err);
    static const char *const op_fields[] = {"op", NULL};
    CHECK(!ha_params_only(&ops[2], "ops[2]", op_fields, &err));
    CHECK(strcmp(err.ptr, "invalid params: unknown field \"ops[2].opp\", expected one of \"op\"") == 0);
    ha_buf_free(&err);
    ha_json_free(doc);
}

int main(void) {
    test_values();
    test_errors();
    test_writer();
    test_params();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
