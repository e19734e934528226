/*
 * {{name}}: a hostaction action in C. It ensures one file (and its
 * directory) holds the given contents, through the `files` capability, and
 * says whether it changed anything.
 */
#include <string.h>

#include "hostaction.h"

/* The params: both fields required, unknown fields refused, so a typo never
 * goes unnoticed. */
typedef struct {
    /* The file to ensure: an absolute path beneath a granted directory. */
    const char *path;
    /* What the file must hold. */
    const char *contents;
} params;

static bool read_params(const ha_json *json, params *p, ha_buf *err) {
    static const char *const fields[] = {"path", "contents", NULL};
    if (!ha_params_only(json, NULL, fields, err) ||
        !ha_param_string(json, NULL, "path", NULL, &p->path, err) ||
        !ha_param_string(json, NULL, "contents", NULL, &p->contents, err)) {
        return false;
    }
    if (p->path[0] != '/') {
        ha_buf_puts(err, "invalid params: field \"path\": ");
        ha_buf_json_string(err, p->path, strlen(p->path));
        ha_buf_puts(err, " is not absolute");
        return false;
    }
    return true;
}

/* Ensures the file's directory, then the file. Capability errors are
 * values: each one becomes the run's error, saying what failed. */
static bool ensure(const params *p, bool *changed, ha_buf *err) {
    ha_error e;
    bool dir_changed = false, file_changed = false;
    size_t dir_len = (size_t)(strrchr(p->path, '/') - p->path);
    if (dir_len > 0) {
        ha_buf dir = {0};
        ha_buf_append(&dir, p->path, dir_len);
        bool ok = hostaction_host_files_ensure_dir(HA_STR(dir.ptr), 0755, &dir_changed, &e);
        if (!ok) {
            ha_buf_printf(err, "creating %s: ", dir.ptr);
            ha_buf_error(err, &e);
            hostaction_host_types_error_free(&e);
        }
        ha_buf_free(&dir);
        if (!ok) {
            return false;
        }
    }
    if (!hostaction_host_files_ensure_file(HA_STR(p->path),
                                           HA_BYTES(p->contents, strlen(p->contents)), 0644,
                                           &file_changed, &e)) {
        ha_buf_printf(err, "writing %s: ", p->path);
        ha_buf_error(err, &e);
        hostaction_host_types_error_free(&e);
        return false;
    }
    *changed = dir_changed || file_changed;
    return true;
}

/* The action's entry point, declared by the bindings (sdk/bindings). */
bool exports_files_action_run(files_action_string_t *json, files_action_outcome_t *ret,
                              files_action_string_t *err) {
    ha_buf msg = {0};
    ha_json_doc *doc = NULL;
    params p;
    bool changed = false;
    bool ok = ha_params_parse((const char *)json->ptr, json->len, &doc, &msg) &&
              read_params(ha_json_root(doc), &p, &msg);
    files_action_string_free(json);
    if (ok) {
        ha_log(HOSTACTION_HOST_LOG_LEVEL_INFO, "ensuring %s", p.path);
        ok = ensure(&p, &changed, &msg);
    }
    if (ok) {
        ha_outcome_init(ret, changed);
        ha_buf line = {0};
        ha_buf_printf(&line, changed ? "wrote %s" : "%s already up to date", p.path);
        ha_outcome_message(ret, line.ptr);
        ha_buf_free(&line);
        ha_outcome_fact(ret, "path", p.path);
    }
    ha_json_free(doc);
    return ok ? true : ha_fail(err, &msg);
}
