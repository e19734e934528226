/*
 * hostaction: see hostaction.h.
 */
#include "hostaction.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *ha_error_kind(const ha_error *err) {
    switch (err->tag) {
    case HOSTACTION_HOST_TYPES_ERROR_PERMISSION_DENIED: return "permission-denied";
    case HOSTACTION_HOST_TYPES_ERROR_INVALID_ARGUMENT: return "invalid-argument";
    case HOSTACTION_HOST_TYPES_ERROR_NOT_FOUND: return "not-found";
    case HOSTACTION_HOST_TYPES_ERROR_CONFLICT: return "conflict";
    case HOSTACTION_HOST_TYPES_ERROR_UNSUPPORTED: return "unsupported";
    case HOSTACTION_HOST_TYPES_ERROR_TIMEOUT: return "timeout";
    case HOSTACTION_HOST_TYPES_ERROR_IO: return "io";
    }
    return "unknown";
}

const files_action_string_t *ha_error_message(const ha_error *err) {
    /* Every case carries a string, at the same place in the union. */
    return &err->val.io;
}

void ha_buf_error(ha_buf *buf, const ha_error *err) {
    const files_action_string_t *message = ha_error_message(err);
    ha_buf_printf(buf, "%s: ", ha_error_kind(err));
    ha_buf_append(buf, (const char *)message->ptr, message->len);
}

/* Aborts with a message: the run cannot report anything without memory. */
static void out_of_memory(const char *what) {
    fprintf(stderr, "hostaction: out of memory %s\n", what);
    abort();
}

void ha_outcome_init(files_action_outcome_t *out, bool changed) {
    *out = (files_action_outcome_t){.changed = changed};
}

/* A malloc'd WIT string holding `len` bytes of `text`, made valid UTF-8. */
static files_action_string_t owned_utf8(const char *text, size_t len) {
    ha_buf buf = {0};
    ha_buf_utf8_lossy(&buf, text, len);
    if (buf.len == 0) {
        /* The bindings free only non-empty strings. */
        ha_buf_free(&buf);
        return (files_action_string_t){0};
    }
    size_t n;
    char *ptr = ha_buf_take(&buf, &n);
    return (files_action_string_t){(uint8_t *)ptr, n};
}

void ha_outcome_message(files_action_outcome_t *out, const char *message) {
    files_action_string_free(&out->message);
    out->message = owned_utf8(message, strlen(message));
}

void ha_outcome_fact_n(files_action_outcome_t *out, const char *key, const char *value,
                       size_t len) {
    hostaction_host_types_list_fact_t *facts = &out->facts;
    /* Grows by one each time: outcomes hold few facts (64 KiB in all). */
    hostaction_host_types_fact_t *ptr = realloc(facts->ptr, (facts->len + 1) * sizeof *ptr);
    if (ptr == NULL) {
        out_of_memory("adding a fact");
    }
    facts->ptr = ptr;
    ptr[facts->len].key = owned_utf8(key, strlen(key));
    ptr[facts->len].value = owned_utf8(value, len);
    facts->len++;
}

void ha_outcome_fact(files_action_outcome_t *out, const char *key, const char *value) {
    ha_outcome_fact_n(out, key, value, strlen(value));
}

bool ha_fail(files_action_string_t *err, ha_buf *msg) {
    /* Messages may quote host data: keep the WIT string valid UTF-8. */
    *err = owned_utf8(msg->ptr != NULL ? msg->ptr : "", msg->len);
    ha_buf_free(msg);
    return false;
}

bool ha_failf(files_action_string_t *err, const char *format, ...) {
    ha_buf msg = {0};
    va_list args;
    va_start(args, format);
    ha_buf_vprintf(&msg, format, args);
    va_end(args);
    return ha_fail(err, &msg);
}

void ha_log(hostaction_host_log_level_t level, const char *format, ...) {
    ha_buf line = {0};
    va_list args;
    va_start(args, format);
    ha_buf_vprintf(&line, format, args);
    va_end(args);
    files_action_string_t message = owned_utf8(line.ptr != NULL ? line.ptr : "", line.len);
    ha_buf_free(&line);
    hostaction_host_log_write(level, &message);
    files_action_string_free(&message);
}
