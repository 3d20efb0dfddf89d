# The guest program of vmstream-kvm: 32-bit protected mode, flat segments,
# no paging, loaded at 0x2000. Every vCPU runs it with ESI = its index and
# ESP = its own stack. Build the bytes in src/program.rs with ./build.sh.
#
# Mailbox (page 0), written by the host before the first run:
#   0x04 pages to write per tick, per vCPU   0x08 ticks between serial lines
#   0x0c LAPIC timer count of one tick (divide by 1: 10 ms = 10_000_000)
# Per vCPU i, at 0x100 + 64 * i:
#   +0x00 first byte of its slice  +0x04 pages in its slice  +0x08 cursor
#   +0x0c tick counter             +0x10 pages written
        .intel_syntax noprefix
        .code32
        .text
base:
        jmp     start
        .org    base + 0x10
timer:                                  # vector 0x20: the LAPIC timer
        mov     dword ptr [0xfee000b0], 0       # EOI
        add     esp, 12                         # drop the interrupt frame and
        jmp     tick                            # go on after the hlt: interrupts
                                                # are on only in "sti; hlt", and
                                                # KVM's instruction emulator (which
                                                # some hosts run this program in)
                                                # has no protected-mode iret
        .org    base + 0x20
msg:    .asciz  "counter "
        .org    base + 0x40
start:
        mov     ebp, esi
        shl     ebp, 6
        add     ebp, 0x100                      # ebp = this vCPU's block
        mov     dword ptr [0xfee000f0], 0x1ff   # APIC software enable (first:
                                                # LVT writes keep the mask before)
        mov     dword ptr [0xfee003e0], 0xb     # timer divide by 1
        mov     dword ptr [0xfee00320], 0x20020 # periodic, vector 0x20
        mov     eax, [0x0c]
        mov     [0xfee00380], eax               # initial count: starts the timer
idle:
        sti
        hlt                                     # until the next tick
tick:
        cli
        inc     dword ptr [ebp + 0x0c]          # counter
        mov     ecx, [0x04]                     # pages this tick
        jecxz   ticked
page:
        mov     eax, [ebp + 0x08]               # cursor
        mov     ebx, eax
        inc     eax
        cmp     eax, [ebp + 0x04]
        jb      1f
        xor     eax, eax                        # wrap around the slice
1:      mov     [ebp + 0x08], eax
        shl     ebx, 12
        add     ebx, [ebp + 0x00]               # ebx = page address
        mov     eax, [ebp + 0x0c]
        mov     [ebx], eax                      # counter
        mov     [ebx + 4], esi                  # vCPU
        mov     [ebx + 8], ebx                  # address
        mov     dword ptr [ebx + 12], 0x5a5aa5a5 # pattern
        inc     dword ptr [ebp + 0x10]
        loop    page
ticked:
        test    esi, esi
        jnz     idle                            # only vCPU 0 prints
        mov     eax, [ebp + 0x0c]
        xor     edx, edx
        div     dword ptr [0x08]
        test    edx, edx
        jnz     idle
        mov     edi, offset msg
2:      mov     al, [edi]
        test    al, al
        jz      3f
        call    putc
        inc     edi
        jmp     2b
3:      mov     eax, [ebp + 0x0c]               # the counter in decimal
        mov     ebx, 10
        xor     ecx, ecx
4:      xor     edx, edx
        div     ebx
        add     dl, 0x30
        push    edx
        inc     ecx
        test    eax, eax
        jnz     4b
5:      pop     eax
        call    putc
        loop    5b
        mov     al, 0x0a
        call    putc
        jmp     idle
putc:                                           # al: the byte to send
        push    edx
        push    eax
        mov     dx, 0x3fd                       # LSR
6:      in      al, dx
        test    al, 0x20                        # THR empty?
        jz      6b
        pop     eax
        mov     dx, 0x3f8                       # THR
        out     dx, al
        pop     edx
        ret
