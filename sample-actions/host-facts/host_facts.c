/*
 * host-facts: a hostaction sample action in C. Reads what the host is (its
 * OS from os-release, its hostname, its machine id) through the `files`
 * capability, reports it as facts, and ensures a JSON file holding the same
 * facts. Idempotent: the file is rewritten only when a fact changed.
 *
 * Params: {"path": "/var/lib/hostaction/host-facts.json"} (the default).
 */
#include <stdlib.h>
#include <string.h>

#include "hostaction.h"

#define DEFAULT_PATH "/var/lib/hostaction/host-facts.json"
/* Where os-release(5) is, in the order the spec says to look. */
#define OS_RELEASE "/etc/os-release"
#define OS_RELEASE_FALLBACK "/usr/lib/os-release"
#define HOSTNAME_FILE "/etc/hostname"
#define MACHINE_ID_FILE "/etc/machine-id"

/* What the action reports; every string is malloc'd, NULL when unknown. */
typedef struct {
    char *os_id;
    char *os_version_id;
    char *os_pretty_name;
    char *hostname;
    char *machine_id;
} facts;

static void facts_free(facts *f) {
    free(f->os_id);
    free(f->os_version_id);
    free(f->os_pretty_name);
    free(f->hostname);
    free(f->machine_id);
}

/* A malloc'd, NUL-terminated copy of `len` bytes. */
static char *copy(const char *text, size_t len) {
    ha_buf b = {0};
    ha_buf_append(&b, text, len);
    return ha_buf_take(&b, NULL);
}

/* Reads a whole file through the capability. Returns false with `*e` set
 * (free it with hostaction_host_types_error_free). */
static bool read_file(const char *path, ha_buf *out, ha_error *e) {
    files_action_list_u8_t bytes;
    if (!hostaction_host_files_read_file(HA_STR(path), &bytes, e)) {
        return false;
    }
    ha_buf_append(out, (const char *)bytes.ptr, bytes.len);
    files_action_list_u8_free(&bytes);
    return true;
}

/* Appends "reading PATH: <kind>: <message>" to `msg` and frees `e`. */
static void describe_read_error(ha_buf *msg, const char *path, ha_error *e) {
    ha_buf_printf(msg, "reading %s: ", path);
    ha_buf_error(msg, e);
    hostaction_host_types_error_free(e);
}

/* Unquotes an os-release value: double quotes with \" \\ \$ \` escapes,
 * single quotes verbatim, or a bare word. Returns a malloc'd string. */
static char *os_release_value(const char *v, size_t len) {
    if (len >= 2 && (v[0] == '"' || v[0] == '\'') && v[len - 1] == v[0]) {
        char quote = v[0];
        ha_buf b = {0};
        for (size_t i = 1; i < len - 1; i++) {
            if (quote == '"' && v[i] == '\\' && i + 1 < len - 1 && strchr("\"\\$`", v[i + 1])) {
                i++;
            }
            ha_buf_append(&b, &v[i], 1);
        }
        return ha_buf_take(&b, NULL);
    }
    return copy(v, len);
}

/* Picks ID, VERSION_ID and PRETTY_NAME out of os-release text (KEY=VALUE
 * lines; blank lines and `#` comments skipped). A later assignment wins, as
 * in the shell. */
static void parse_os_release(const char *text, size_t len, facts *f) {
    const char *end = text + len;
    for (const char *line = text; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL) {
            eol = end;
        }
        const char *eq = memchr(line, '=', (size_t)(eol - line));
        const char *value_end = eol;
        while (value_end > line && (value_end[-1] == ' ' || value_end[-1] == '\t' ||
                                    value_end[-1] == '\r')) {
            value_end--;
        }
        if (line[0] != '#' && eq != NULL && eq < value_end) {
            size_t key_len = (size_t)(eq - line);
            char **slot = NULL;
            if (key_len == 2 && memcmp(line, "ID", 2) == 0) {
                slot = &f->os_id;
            } else if (key_len == 10 && memcmp(line, "VERSION_ID", 10) == 0) {
                slot = &f->os_version_id;
            } else if (key_len == 11 && memcmp(line, "PRETTY_NAME", 11) == 0) {
                slot = &f->os_pretty_name;
            }
            if (slot != NULL) {
                free(*slot);
                *slot = os_release_value(eq + 1, (size_t)(value_end - eq - 1));
            }
        }
        line = eol + 1;
    }
    /* os-release(5)'s defaults for the two fields it defines them for. */
    if (f->os_id == NULL) {
        f->os_id = copy("linux", 5);
    }
    if (f->os_pretty_name == NULL) {
        f->os_pretty_name = copy("Linux", 5);
    }
}

/* Reads os-release: /etc/os-release, else /usr/lib/os-release. The /etc one
 * is usually a symlink to ../usr/lib/os-release, which the files capability
 * does not follow out of /etc (permission-denied): the fallback file is the
 * one it points at. */
static bool read_os(facts *f, ha_buf *msg) {
    ha_buf text = {0};
    ha_error e;
    if (!read_file(OS_RELEASE, &text, &e)) {
        if (e.tag != HOSTACTION_HOST_TYPES_ERROR_NOT_FOUND &&
            e.tag != HOSTACTION_HOST_TYPES_ERROR_PERMISSION_DENIED) {
            describe_read_error(msg, OS_RELEASE, &e);
            return false;
        }
        ha_error fallback;
        if (!read_file(OS_RELEASE_FALLBACK, &text, &fallback)) {
            describe_read_error(msg, OS_RELEASE, &e);
            ha_buf_puts(msg, "; ");
            describe_read_error(msg, OS_RELEASE_FALLBACK, &fallback);
            return false;
        }
        hostaction_host_types_error_free(&e);
    }
    parse_os_release(text.ptr != NULL ? text.ptr : "", text.len, f);
    ha_buf_free(&text);
    return true;
}

/* The first line of `text` that is neither blank nor a `#` comment,
 * trimmed; NULL when there is none. */
static char *first_line(const char *text, size_t len) {
    const char *end = text + len;
    for (const char *line = text; line < end;) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL) {
            eol = end;
        }
        const char *s = line, *e = eol;
        while (s < e && (*s == ' ' || *s == '\t' || *s == '\r')) {
            s++;
        }
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) {
            e--;
        }
        if (s < e && *s != '#') {
            return copy(s, (size_t)(e - s));
        }
        line = eol + 1;
    }
    return NULL;
}

/* Reads the first meaningful line of `path` into `*out`. A missing file is
 * fine when `optional` (`*out` stays NULL); an empty one gives NULL too. */
static bool read_line(const char *path, bool optional, char **out, ha_buf *msg) {
    ha_buf text = {0};
    ha_error e;
    if (!read_file(path, &text, &e)) {
        if (optional && e.tag == HOSTACTION_HOST_TYPES_ERROR_NOT_FOUND) {
            hostaction_host_types_error_free(&e);
            return true;
        }
        describe_read_error(msg, path, &e);
        return false;
    }
    *out = first_line(text.ptr != NULL ? text.ptr : "", text.len);
    ha_buf_free(&text);
    return true;
}

/* Fails when /etc/hostname was there but held no hostname. */
static bool have_hostname(const facts *f, ha_buf *msg) {
    if (f->hostname == NULL) {
        ha_buf_puts(msg, HOSTNAME_FILE " holds no hostname");
        return false;
    }
    return true;
}

/* Appends `"key": value` (a JSON string, or null) to an object being built. */
static void json_member(ha_buf *out, const char *indent, const char *key, const char *value,
                        bool last) {
    ha_buf_printf(out, "%s\"%s\": ", indent, key);
    if (value != NULL) {
        ha_buf_json_string(out, value, strlen(value));
    } else {
        ha_buf_puts(out, "null");
    }
    ha_buf_puts(out, last ? "\n" : ",\n");
}

/* The file's contents: the facts as JSON, keys in a fixed order, so that the
 * same facts always give the same bytes. */
static void facts_json(const facts *f, ha_buf *out) {
    ha_buf_puts(out, "{\n");
    json_member(out, "  ", "hostname", f->hostname, false);
    json_member(out, "  ", "machineId", f->machine_id, false);
    ha_buf_puts(out, "  \"os\": {\n");
    json_member(out, "    ", "id", f->os_id, false);
    json_member(out, "    ", "versionId", f->os_version_id, false);
    json_member(out, "    ", "prettyName", f->os_pretty_name, true);
    ha_buf_puts(out, "  }\n}\n");
}

/* Checks `path`: absolute, a file name after its last `/`. */
static bool check_path(const char *path, ha_buf *msg) {
    size_t len = strlen(path);
    if (path[0] != '/' || path[len - 1] == '/') {
        ha_buf_puts(msg, "invalid params: field \"path\": ");
        ha_buf_json_string(msg, path, len);
        ha_buf_puts(msg, " is not an absolute path to a file");
        return false;
    }
    return true;
}

/* Ensures the file's directory and the file; sets `*changed`. */
static bool write_facts(const char *path, const facts *f, bool *changed, ha_buf *msg) {
    ha_error e;
    bool dir_changed = false;
    const char *slash = strrchr(path, '/');
    if (slash != path) {
        char *dir = copy(path, (size_t)(slash - path));
        bool ok = hostaction_host_files_ensure_dir(HA_STR(dir), 0755, &dir_changed, &e);
        if (!ok) {
            ha_buf_printf(msg, "creating %s: ", dir);
            ha_buf_error(msg, &e);
            hostaction_host_types_error_free(&e);
        }
        free(dir);
        if (!ok) {
            return false;
        }
    }
    ha_buf contents = {0};
    facts_json(f, &contents);
    bool file_changed = false;
    bool ok = hostaction_host_files_ensure_file(HA_STR(path), HA_BYTES(contents.ptr, contents.len),
                                                0644, &file_changed, &e);
    ha_buf_free(&contents);
    if (!ok) {
        ha_buf_printf(msg, "writing %s: ", path);
        ha_buf_error(msg, &e);
        hostaction_host_types_error_free(&e);
        return false;
    }
    *changed = dir_changed || file_changed;
    return true;
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
    static const char *const fields[] = {"path", NULL};
    const char *path = NULL;
    facts f = {0};
    bool changed = false;
    ok = ha_params_only(ha_json_root(doc), NULL, fields, &msg) &&
         ha_param_string(ha_json_root(doc), NULL, "path", DEFAULT_PATH, &path, &msg) &&
         check_path(path, &msg) && read_os(&f, &msg) &&
         read_line(HOSTNAME_FILE, false, &f.hostname, &msg) && have_hostname(&f, &msg) &&
         read_line(MACHINE_ID_FILE, true, &f.machine_id, &msg) &&
         write_facts(path, &f, &changed, &msg);
    if (ok) {
        ha_buf line = {0};
        ha_buf_printf(&line, "%s: %s, facts %s %s", f.hostname, f.os_pretty_name,
                      changed ? "written to" : "already in", path);
        ha_outcome_init(ret, changed);
        ha_outcome_message(ret, line.ptr);
        ha_buf_free(&line);
        ha_outcome_fact(ret, "os-id", f.os_id);
        ha_outcome_fact(ret, "os-version-id", f.os_version_id ? f.os_version_id : "absent");
        ha_outcome_fact(ret, "os-pretty-name", f.os_pretty_name);
        ha_outcome_fact(ret, "hostname", f.hostname);
        ha_outcome_fact(ret, "machine-id", f.machine_id ? f.machine_id : "absent");
        ha_outcome_fact(ret, "path", path);
    }
    facts_free(&f);
    ha_json_free(doc);
    return ok ? true : ha_fail(err, &msg);
}
