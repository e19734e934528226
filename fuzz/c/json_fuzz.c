/*
 * libFuzzer target for the C SDK's JSON parser and writer
 * (sdk/c/hostaction_json.c), built by scripts/fuzz.sh with
 * `clang -fsanitize=fuzzer,address,undefined`. An action's params are the
 * document a hostile or broken HostAction hands to a C action.
 *
 * What must hold for any input: a parse either fails with an offset inside
 * the input, or what it gives back writes out as JSON that parses again and
 * writes out the same; the params readers never fail without a message; any
 * bytes written as a JSON string parse back as one string.
 */
#include "hostaction_json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRE(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* Writes `value` out, parses that back, and checks that it writes the same. */
static void round_trip(const ha_json *value) {
    ha_buf first = {0};
    ha_buf_json(&first, value);
    ha_json_error err;
    ha_json_doc *again = ha_json_parse(first.ptr, first.len, &err);
    if (again == NULL) {
        fprintf(stderr, "written JSON does not parse (%zu: %s): %s\n", err.offset,
                err.message, first.ptr);
        abort();
    }
    ha_buf second = {0};
    ha_buf_json(&second, ha_json_root(again));
    REQUIRE(first.len == second.len && memcmp(first.ptr, second.ptr, first.len) == 0);
    ha_buf_free(&second);
    ha_json_free(again);
    ha_buf_free(&first);
}

/* The readers an action calls on its params, over every member. */
static void read_params(const char *data, size_t size) {
    ha_json_doc *doc = NULL;
    ha_buf err = {0};
    if (!ha_params_parse(data, size, &doc, &err)) {
        REQUIRE(doc == NULL && err.len > 0);
        ha_buf_free(&err);
        return;
    }
    const ha_json *root = ha_json_root(doc);
    static const char *const known[] = {"name", "mode", "ops", NULL};
    if (!ha_params_only(root, NULL, known, &err)) {
        REQUIRE(err.len > 0);
    }
    for (size_t i = 0; i < root->u.object.len; i++) {
        const char *key = root->u.object.members[i].key;
        const char *s;
        uint32_t n;
        const ha_json *items;
        size_t len;
        err.len = 0;
        if (!ha_param_string(root, NULL, key, NULL, &s, &err)) {
            REQUIRE(err.len > 0);
        } else {
            REQUIRE(s != NULL);
        }
        err.len = 0;
        if (!ha_param_u32(root, NULL, key, true, 0, &n, &err)) {
            REQUIRE(err.len > 0);
        }
        err.len = 0;
        if (ha_param_array(root, "ops[0]", key, false, &items, &len, &err)) {
            for (size_t j = 0; j < len; j++) {
                err.len = 0;
                if (!ha_param_object(&items[j], "ops[0]", &err)) {
                    REQUIRE(err.len > 0);
                }
            }
        } else {
            REQUIRE(err.len > 0);
        }
    }
    ha_buf_free(&err);
    ha_json_free(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    ha_json_error err;
    ha_json_doc *doc = ha_json_parse(text, size, &err);
    if (doc == NULL) {
        REQUIRE(err.offset <= size);
        REQUIRE(memchr(err.message, '\0', sizeof err.message) != NULL && err.message[0]);
    } else {
        round_trip(ha_json_root(doc));
        ha_json_free(doc);
    }
    read_params(text, size);

    /* Any bytes, written as a JSON string, parse back as one string; valid
     * UTF-8 comes back byte for byte. */
    ha_buf lit = {0};
    ha_buf_json_string(&lit, text, size);
    ha_json_doc *str = ha_json_parse(lit.ptr, lit.len, &err);
    REQUIRE(str != NULL && ha_json_root(str)->type == HA_JSON_STRING);
    ha_buf lossy = {0};
    ha_buf_utf8_lossy(&lossy, text, size);
    const ha_json *s = ha_json_root(str);
    REQUIRE(s->u.string.len == lossy.len &&
            (lossy.len == 0 || memcmp(s->u.string.ptr, lossy.ptr, lossy.len) == 0));
    ha_json_free(str);
    ha_buf_free(&lossy);
    ha_buf_free(&lit);
    return 0;
}
