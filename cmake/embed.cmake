# Turns text files (Lua scripts) into a C source file at build time:
#   cmake -DOUT=gen.c -DNAMES="a;b" -DFILES="a.lua;b.lua" -P embed.cmake
# Each file becomes `const char NAME[]` (NUL-terminated) and `const size_t NAME_len`.
set(out "/* Generated from the Lua files next to the component's sources; do not edit. */\n")
string(APPEND out "#include <stddef.h>\n")
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
endforeach()
file(WRITE "${OUT}.tmp" "${out}")
file(RENAME "${OUT}.tmp" "${OUT}")
