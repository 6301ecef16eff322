/* Runs a process as if its CPU had only AVX2: cpuid answers with AVX-512, VNNI (AVX-512 and AVX)
 * and AMX hidden, so onnxruntime (MLAS), PyTorch (oneDNN, ATen), OpenBLAS and numpy each pick the
 * kernels they would pick on an AVX2 + FMA machine without VNNI (x86-64-v3, e.g. AMD Zen 3), on
 * this machine's cores. bench/isa.py builds it and sets LD_PRELOAD; see there for what it is for.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag cpuid_fault) makes every cpuid
 * instruction of this process raise SIGSEGV; the handler runs the real cpuid, clears the bits below
 * and steps over the instruction. The setting survives clone() and so covers every thread started
 * after the library loads; execve() clears it, so child processes get it through LD_PRELOAD again.
 * Anything that replaces the SIGSEGV handler later (Python's faulthandler) breaks it.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

/* leaf 7, subleaf 0 */
#define EBX7_HIDDEN ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
/* avx512f dq ifma pf er cd bw vl */
#define ECX7_HIDDEN ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* avx512_vbmi vbmi2 vnni bitalg vpopcntdq */
#define EDX7_HIDDEN ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* avx512_4vnniw 4fmaps vp2intersect, amx_bf16, avx512_fp16, amx_tile, amx_int8 */
/* leaf 7, subleaf 1: avx_vnni, avx512_bf16 */
#define EAX71_HIDDEN ((1u << 4) | (1u << 5))
/* leaf 0xd, subleaf 0: the opmask / ZMM state components and AMX tile state */
#define EAXD_HIDDEN ((7u << 5) | (3u << 17))

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)info;
    greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)reg[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real segmentation fault: die of it as usual */
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)reg[REG_RAX], sub = (uint32_t)reg[REG_RCX], a, b, c, d;
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, a, b, c, d);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && sub == 0) {
        b &= ~EBX7_HIDDEN;
        c &= ~ECX7_HIDDEN;
        d &= ~EDX7_HIDDEN;
    } else if (leaf == 7 && sub == 1) {
        a &= ~EAX71_HIDDEN;
    } else if (leaf == 0xd && sub == 0) {
        a &= ~EAXD_HIDDEN;
    }
    reg[REG_RAX] = a;
    reg[REG_RBX] = b;
    reg[REG_RCX] = c;
    reg[REG_RDX] = d;
    reg[REG_RIP] += 2;
}

__attribute__((constructor)) static void isa_mask_init(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        perror("bench/isa_mask: arch_prctl(ARCH_SET_CPUID) failed, this CPU or kernel has no CPUID faulting");
        _exit(97);
    }
}
