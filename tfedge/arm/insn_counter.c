/*
 * tfedge's qemu TCG plugin: exact guest instruction counts between markers.
 *
 * Every translated block gets an inline 64-bit add of its instruction count
 * (no helper call, so counting costs little), and each time the guest makes
 * the marker system call (default: sched_yield, aarch64 syscall 124) the
 * running total is appended to the output file, one decimal number a line.
 * The guest brackets an inference with two markers; the difference of the
 * two totals is the instructions of exactly that inference.
 *
 * Arguments (qemu 7.2 syntax: -plugin counter.so,out=FILE,syscall=N):
 *   out      file the totals are written to (required)
 *   syscall  marker system call number (default 124)
 *
 * The qemu plugin header is not packaged by Debian; the declarations below
 * are the subset of plugin API version 1 (qemu 7.2, include/qemu/qemu-plugin.h)
 * this plugin uses. The counter is shared by all vCPUs: count with one guest
 * thread (tfedge runs the interpreter with num_threads=1).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index,
                                              int64_t num, uint64_t a1, uint64_t a2,
                                              uint64_t a3, uint64_t a4, uint64_t a5,
                                              uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

#define EXPORT __attribute__((visibility("default")))

EXPORT int qemu_plugin_version = 1;

static uint64_t insn_count;
static int64_t marker = 124;
static FILE *out;

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                       uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                       uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id; (void)vcpu_index; (void)a1; (void)a2; (void)a3; (void)a4;
    (void)a5; (void)a6; (void)a7; (void)a8;
    if (num == marker) {
        fprintf(out, "%" PRIu64 "\n", insn_count);
        fflush(out);
    }
}

static void on_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id; (void)userdata;
    fprintf(out, "exit %" PRIu64 "\n", insn_count);
    fclose(out);
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                               int argc, char **argv)
{
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else if (strncmp(argv[i], "syscall=", 8) == 0) {
            marker = strtoll(argv[i] + 8, NULL, 10);
        } else {
            fprintf(stderr, "tfedge insn_counter: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (path == NULL || (out = fopen(path, "w")) == NULL) {
        fprintf(stderr, "tfedge insn_counter: give a writable out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_plugin_exit, NULL);
    return 0;
}
