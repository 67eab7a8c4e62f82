/* json.h: cJSON with errors that name the file, and typed field getters.
 *
 * Getters return PEFT_OK and write *out, or (when the key is absent) leave *out unchanged
 * and return PEFT_OK if `required` is 0; a present field of the wrong type is always an
 * error naming file and field. */
#ifndef PEFT_IO_JSON_H
#define PEFT_IO_JSON_H

#include <cjson/cJSON.h>
#include "error.h"

/* Parses a JSON document held in memory, as strictly as Python's json.loads: nothing but
 * whitespace after the value, no duplicate keys (Python keeps the last, cJSON the first).
 * `what` names it in messages (a path), with the line and column of the fault. */
int peft_json_parse(const char *text, size_t len, const char *what, cJSON **out, peft_err *err);
/* The same for one record of a JSONL file, text[0, len) being line `line` of `path`: messages
 * say PATH:LINE:COLUMN (invalid JSON, characters after the record, a duplicate key). */
int peft_json_parse_record(const char *text, size_t len, const char *path, int line, cJSON **out, peft_err *err);
/* Reads and parses a file. Caller frees with cJSON_Delete. */
int peft_json_load(const char *path, cJSON **out, peft_err *err);

int peft_json_int(const cJSON *obj, const char *key, int required, long long *out, const char *what, peft_err *err);
int peft_json_double(const cJSON *obj, const char *key, int required, double *out, const char *what, peft_err *err);
int peft_json_bool(const cJSON *obj, const char *key, int required, int *out, const char *what, peft_err *err);
/* *out points into obj (valid while obj lives). */
int peft_json_string(const cJSON *obj, const char *key, int required, const char **out, const char *what, peft_err *err);

#endif
