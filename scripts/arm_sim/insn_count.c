/*
 * litegate's TCG plugin for qemu-aarch64 (user mode): guest instructions executed between two marker
 * system calls, one line per marked region, written to the file given as `out=PATH`.
 *
 *   qemu-aarch64 -plugin insn_count.so,out=/tmp/counts.txt ... python3 guest.py
 *
 * The guest marks a region with umask(LITEGATE_MARK_START | mask) ... umask(LITEGATE_MARK_STOP | mask), where mask
 * is its current umask: the kernel keeps only the low 9 bits, so the calls change nothing and cannot fail (no error
 * path runs inside the region), and no other program sets those high bits. Counting is
 * inline (one add per translation block executed, no callback per instruction), so a count depends only on
 * the guest code executed: the same model, input and CPU features give the same count in every process.
 *
 * Debian ships QEMU's plugin API without its header (qemu-plugin.h), so the few declarations used are written
 * here; they follow QEMU's stable plugin C ABI (API version 1, QEMU 6.0 - 8.x), which QEMU checks against
 * qemu_plugin_version when it loads the plugin.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))
#define LITEGATE_MARK_START 0x4c470000u
#define LITEGATE_MARK_STOP 0x4c480000u
#define LITEGATE_MARK_BITS 0xffff0000u
#define AARCH64_NR_UMASK 166

typedef uint64_t qemu_plugin_id_t;
struct qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                             uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;

static uint64_t insns;
static FILE *out;

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    char line[32];
    (void)id; (void)vcpu_index; (void)a2; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
    if (num != AARCH64_NR_UMASK) {
        return;
    }
    if (((uint32_t)a1 & LITEGATE_MARK_BITS) == LITEGATE_MARK_START) {
        insns = 0;
    } else if (((uint32_t)a1 & LITEGATE_MARK_BITS) == LITEGATE_MARK_STOP) {
        snprintf(line, sizeof line, "%" PRIu64 "\n", insns);
        if (out != NULL) {
            fputs(line, out);
            fflush(out);
        } else {
            qemu_plugin_outs(line);
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id; (void)userdata;
    if (out != NULL) {
        fclose(out);
        out = NULL;
    }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const struct qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "w");
            if (out == NULL) {
                return -1;
            }
        } else {
            fprintf(stderr, "insn_count: unknown argument %s (takes out=PATH)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
