/*
 * hostaction: the C SDK for hostaction actions of world `files-action`.
 *
 * An action implements the export wit-bindgen declares in
 * bindings/files_action.h:
 *
 *     bool exports_files_action_run(files_action_string_t *params,
 *                                   files_action_outcome_t *ret,
 *                                   files_action_string_t *err);
 *
 * returning true with `*ret` filled, or false with `*err` set (the run
 * fails with that message). Capability calls return errors as values
 * (`hostaction_host_types_error_t`); a trap (abort(), a wild pointer) fails
 * the run as "trapped". Everything handed to the host in `*ret` or `*err`
 * must be malloc'd: the bindings free it after the host has copied it.
 *
 * This header adds what the raw bindings lack: C-string arguments, the error
 * as "<kind>: <message>", and an outcome builder. The JSON params parser and
 * the string buffer are in hostaction_json.h.
 */
#ifndef HOSTACTION_H
#define HOSTACTION_H

#include <string.h>

#include "bindings/files_action.h"
#include "hostaction_json.h"

/* A capability error (the WIT variant hostaction:host/types.error). */
typedef hostaction_host_types_error_t ha_error;

/* Borrows a NUL-terminated C string as a WIT string argument, for the
 * capability calls: `hostaction_host_files_read_file(HA_STR(path), &bytes, &err)`. */
#define HA_STR(s) (&(files_action_string_t){(uint8_t *)(s), strlen(s)})

/* Borrows `len` bytes as a WIT list<u8> argument (file contents). */
#define HA_BYTES(ptr, len) (&(files_action_list_u8_t){(uint8_t *)(ptr), (len)})

/* The WIT case name of an error: "permission-denied", "invalid-argument",
 * "not-found", "conflict", "unsupported", "timeout" or "io". */
const char *ha_error_kind(const ha_error *err);

/* The error's message (not NUL-terminated; every case carries one). */
const files_action_string_t *ha_error_message(const ha_error *err);

/* Appends "<kind>: <message>" to `buf`. */
void ha_buf_error(ha_buf *buf, const ha_error *err);

/* Starts an outcome: unchanged, no message, no facts. */
void ha_outcome_init(files_action_outcome_t *out, bool changed);

/* Sets the outcome's message to a copy of `message` (valid UTF-8). */
void ha_outcome_message(files_action_outcome_t *out, const char *message);

/* Adds the fact `key` = `value` (copies of both; each invalid UTF-8 sequence
 * becomes U+FFFD, since WIT strings must be UTF-8). Facts keep their order. */
void ha_outcome_fact(files_action_outcome_t *out, const char *key, const char *value);

/* As ha_outcome_fact, with a value of `len` bytes. */
void ha_outcome_fact_n(files_action_outcome_t *out, const char *key, const char *value,
                       size_t len);

/* Makes `msg` the run's error (taking its bytes) and returns false, so a
 * run can end with `return ha_fail(err, &msg);`. */
bool ha_fail(files_action_string_t *err, ha_buf *msg);

/* Formats the run's error and returns false. */
bool ha_failf(files_action_string_t *err, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends one line to the run's log at `level` (HOSTACTION_HOST_LOG_LEVEL_INFO, ...). */
void ha_log(hostaction_host_log_level_t level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

#endif
