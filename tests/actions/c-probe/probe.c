/*
 * c-probe: a test action in C that runs the operations its params list and
 * reports the result of each, so that the end-to-end tests (tests/tests/all/languages.rs)
 * can see how a C component behaves in hostaction: capability errors as
 * values, stdio in the run's log, the WASI it is given, abort() as a trap.
 *
 * Params: {"ops": [{"op": "ensure-file", "path": "...", "contents": "...",
 * "mode": 420}, ...]}. Ops run in order; a capability error does not stop the
 * run. Fact "<index>" holds {"ok": value} or {"err": {"kind": "...",
 * "message": "..."}} for the op at that index. Ops:
 *   ensure-file {path, contents, mode}  files.ensure-file; ok: changed
 *   print {message}                     a line on stdout; ok: null
 *   eprint {message}                    a line on stderr; ok: null
 *   env                                 ok: {"vars": n, "args": n} as WASI shows them
 *   wasi-read {path}                    reads through wasi-libc (not the capability);
 *                                       ok: the contents, err kind "io" with strerror
 *   throw {message}                     the message on stderr, then abort()
 *   fail {message}                      ends the run with err(message)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

#include "hostaction.h"

typedef enum { OP_ENSURE_FILE, OP_PRINT, OP_EPRINT, OP_ENV, OP_WASI_READ, OP_THROW, OP_FAIL } op_kind;

/* One op, validated; its strings point into the params document. */
typedef struct {
    op_kind kind;
    const char *path;
    const char *contents;
    const char *message;
    uint32_t mode;
} op;

/* An op's name, the fields it takes, and which of them it needs. */
static const struct {
    const char *name;
    op_kind kind;
    const char *const fields[4];
} OPS[] = {
    {"ensure-file", OP_ENSURE_FILE, {"op", "path", "contents", "mode"}},
    {"print", OP_PRINT, {"op", "message"}},
    {"eprint", OP_EPRINT, {"op", "message"}},
    {"env", OP_ENV, {"op"}},
    {"wasi-read", OP_WASI_READ, {"op", "path"}},
    {"throw", OP_THROW, {"op", "message"}},
    {"fail", OP_FAIL, {"op", "message"}},
};
enum { N_OPS = sizeof OPS / sizeof OPS[0] };

/* Reads element `index` of "ops" into `out`. */
static bool parse_op(const ha_json *value, size_t index, op *out, ha_buf *err) {
    char scope[32];
    snprintf(scope, sizeof scope, "ops[%zu]", index);
    const char *name;
    if (!ha_param_object(value, scope, err) ||
        !ha_param_string(value, scope, "op", NULL, &name, err)) {
        return false;
    }
    size_t i = 0;
    while (i < N_OPS && strcmp(OPS[i].name, name) != 0) {
        i++;
    }
    if (i == N_OPS) {
        ha_buf_printf(err, "invalid params: %s: unknown op ", scope);
        ha_buf_json_string(err, name, strlen(name));
        return false;
    }
    /* NULL-terminated copy of the op's field names. */
    const char *known[5] = {0};
    memcpy(known, OPS[i].fields, sizeof OPS[i].fields);
    *out = (op){.kind = OPS[i].kind};
    switch (out->kind) {
    case OP_ENSURE_FILE:
        return ha_params_only(value, scope, known, err) &&
               ha_param_string(value, scope, "path", NULL, &out->path, err) &&
               ha_param_string(value, scope, "contents", NULL, &out->contents, err) &&
               ha_param_u32(value, scope, "mode", true, 0, &out->mode, err);
    case OP_WASI_READ:
        return ha_params_only(value, scope, known, err) &&
               ha_param_string(value, scope, "path", NULL, &out->path, err);
    case OP_ENV:
        return ha_params_only(value, scope, known, err);
    default:
        return ha_params_only(value, scope, known, err) &&
               ha_param_string(value, scope, "message", NULL, &out->message, err);
    }
}

/* Appends {"err": {"kind": KIND, "message": MESSAGE}}. */
static void err_result(ha_buf *result, const char *kind, const char *message, size_t len) {
    ha_buf_puts(result, "{\"err\":{\"kind\":");
    ha_buf_json_string(result, kind, strlen(kind));
    ha_buf_puts(result, ",\"message\":");
    ha_buf_json_string(result, message, len);
    ha_buf_puts(result, "}}");
}

/* Reads `path` with stdio: with no preopened directories, wasi-libc has
 * nothing to resolve it against and fails. */
static void wasi_read(const char *path, ha_buf *result) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        const char *why = strerror(errno);
        err_result(result, "io", why, strlen(why));
        return;
    }
    ha_buf contents = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        ha_buf_append(&contents, chunk, n);
    }
    fclose(f);
    ha_buf_puts(result, "{\"ok\":");
    ha_buf_json_string(result, contents.ptr != NULL ? contents.ptr : "", contents.len);
    ha_buf_puts(result, "}");
    ha_buf_free(&contents);
}

/* Runs one op (never OP_FAIL); appends its result as JSON; returns whether
 * it changed the host. */
static bool run_op(const op *o, ha_buf *result) {
    switch (o->kind) {
    case OP_ENSURE_FILE: {
        bool changed = false;
        ha_error e;
        if (!hostaction_host_files_ensure_file(HA_STR(o->path),
                                               HA_BYTES(o->contents, strlen(o->contents)),
                                               o->mode, &changed, &e)) {
            const files_action_string_t *m = ha_error_message(&e);
            err_result(result, ha_error_kind(&e), (const char *)m->ptr, m->len);
            hostaction_host_types_error_free(&e);
            return false;
        }
        ha_buf_printf(result, "{\"ok\":%s}", changed ? "true" : "false");
        return changed;
    }
    case OP_PRINT:
        /* stdout is line-buffered: the newline hands the line to the host. */
        printf("%s\n", o->message);
        ha_buf_puts(result, "{\"ok\":null}");
        return false;
    case OP_EPRINT:
        fprintf(stderr, "%s\n", o->message);
        ha_buf_puts(result, "{\"ok\":null}");
        return false;
    case OP_ENV: {
        /* Asked of WASI directly: a reactor has no main() to receive argv. */
        __wasi_size_t vars = 0, args = 0, bytes = 0;
        __wasi_errno_t e = __wasi_environ_sizes_get(&vars, &bytes);
        if (e == 0) {
            e = __wasi_args_sizes_get(&args, &bytes);
        }
        if (e != 0) {
            const char *why = strerror(e);
            err_result(result, "io", why, strlen(why));
            return false;
        }
        ha_buf_printf(result, "{\"ok\":{\"vars\":%lu,\"args\":%lu}}", (unsigned long)vars,
                      (unsigned long)args);
        return false;
    }
    case OP_WASI_READ:
        wasi_read(o->path, result);
        return false;
    case OP_THROW:
        fprintf(stderr, "%s\n", o->message);
        abort();
    case OP_FAIL:
        break;
    }
    return false;
}

bool exports_files_action_run(files_action_string_t *params, files_action_outcome_t *ret,
                              files_action_string_t *err) {
    ha_buf msg = {0};
    ha_json_doc *doc = NULL;
    bool ok = ha_params_parse((const char *)params->ptr, params->len, &doc, &msg);
    files_action_string_free(params);
    if (!ok) {
        return ha_fail(err, &msg);
    }
    static const char *const fields[] = {"ops", NULL};
    const ha_json *items = NULL;
    size_t n = 0;
    if (!ha_params_only(ha_json_root(doc), NULL, fields, &msg) ||
        !ha_param_array(ha_json_root(doc), NULL, "ops", false, &items, &n, &msg)) {
        ha_json_free(doc);
        return ha_fail(err, &msg);
    }
    /* Every op is checked before the first one runs. */
    op *ops = calloc(n ? n : 1, sizeof *ops);
    if (ops == NULL) {
        ha_json_free(doc);
        return ha_failf(err, "out of memory for %zu ops", n);
    }
    for (size_t i = 0; i < n; i++) {
        if (!parse_op(&items[i], i, &ops[i], &msg)) {
            free(ops);
            ha_json_free(doc);
            return ha_fail(err, &msg);
        }
    }

    bool changed = false;
    files_action_outcome_t outcome;
    ha_outcome_init(&outcome, false);
    for (size_t i = 0; i < n; i++) {
        if (ops[i].kind == OP_FAIL) {
            ok = ha_failf(err, "%s", ops[i].message);
            files_action_outcome_free(&outcome);
            break;
        }
        ha_buf result = {0};
        changed |= run_op(&ops[i], &result);
        char key[24];
        snprintf(key, sizeof key, "%zu", i);
        ha_outcome_fact_n(&outcome, key, result.ptr, result.len);
        ha_buf_free(&result);
    }
    if (ok) {
        outcome.changed = changed;
        char message[32];
        snprintf(message, sizeof message, "ran %zu ops", n);
        ha_outcome_message(&outcome, message);
        *ret = outcome;
    }
    free(ops);
    ha_json_free(doc);
    return ok;
}
