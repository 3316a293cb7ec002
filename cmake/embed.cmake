# Turns text files (Lua scripts) into a C source file and its header at build time:
#   cmake -DOUT=gen.c -DHEADER=gen.h -DNAMES="a|b" -DFILES="a.lua|b.lua" -P embed.cmake
# Each file becomes `const char NAME[]` (NUL-terminated) and `const size_t NAME_len`; the header
# declares both on one line per file, the array with its size, so `sizeof NAME - 1` is the
# script's length even in a static initializer.
string(REPLACE "|" ";" FILES "${FILES}")
string(REPLACE "|" ";" NAMES "${NAMES}")
get_filename_component(header_name "${HEADER}" NAME)
string(MAKE_C_IDENTIFIER "${header_name}" guard)
string(TOUPPER "${guard}" guard)
set(out "/* Generated from the Lua files next to the component's sources; do not edit. */\n")
string(APPEND out "#include <stddef.h>\n")
set(decl "/* Generated from the Lua files next to the component's sources; do not edit. */\n")
string(APPEND decl "#ifndef ${guard}\n#define ${guard}\n#include <stddef.h>\n")
list(LENGTH FILES n)
math(EXPR last "${n} - 1")
foreach(i RANGE ${last})
    list(GET FILES ${i} file)
    list(GET NAMES ${i} name)
    file(READ "${file}" hex HEX)
    string(LENGTH "${hex}" hexlen)
    math(EXPR len "${hexlen} / 2")
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
    string(APPEND out "const char ${name}[] = {${bytes}0x00};\n")
    string(APPEND out "const size_t ${name}_len = ${len};\n")
    math(EXPR size "${len} + 1")
    string(APPEND decl "extern const char ${name}[${size}]; extern const size_t ${name}_len;\n")
endforeach()
string(APPEND decl "#endif\n")
# Written through a temporary file and renamed, so a build never sees half a file.
file(WRITE "${OUT}.tmp" "${out}")
file(RENAME "${OUT}.tmp" "${OUT}")
file(WRITE "${HEADER}.tmp" "${decl}")
file(RENAME "${HEADER}.tmp" "${HEADER}")
